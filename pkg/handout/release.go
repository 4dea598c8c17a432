package handout

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/replica"
)

// ReleaseAbandoned gives back what handouts whose checkout no longer exists still hold: a replica claim
// taken but not yet released returns to its pool, and a held volume gets its reclaim policy back, so
// the PV controller reclaims it as it would have without pvpool. Nothing a live checkout holds is
// touched: liveness is read from the API, never from a cache.
func (h *Handout) ReleaseAbandoned(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	held := metav1.ListOptions{LabelSelector: replica.LabelCheckoutUID}

	volumes, err := h.kube.CoreV1().PersistentVolumes().List(ctx, held)
	if err != nil {
		return fmt.Errorf("listing held volumes: %w", err)
	}
	for i := range volumes.Items {
		volume := &volumes.Items[i]
		alive, err := h.checkoutAlive(ctx, volume.Annotations[replica.AnnotationCheckout], volume.Labels[replica.LabelCheckoutUID])
		if err != nil || alive {
			if err != nil {
				return err
			}
			continue
		}
		logger.Info("Releasing the volume of an abandoned handout", "volume", volume.Name, "checkout", volume.Annotations[replica.AnnotationCheckout])
		if ref := volume.Spec.ClaimRef; ref != nil {
			if err := h.untakeClaim(ctx, ref.Namespace, ref.Name, types.UID(volume.Labels[replica.LabelCheckoutUID])); err != nil {
				return err
			}
		}
		_, err = h.updateVolume(ctx, volume.Name, func(volume *corev1.PersistentVolume) bool {
			if original, ok := volume.Annotations[replica.AnnotationOriginalReclaimPolicy]; ok {
				volume.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimPolicy(original)
			}
			delete(volume.Labels, replica.LabelCheckoutUID)
			delete(volume.Annotations, replica.AnnotationCheckout)
			delete(volume.Annotations, replica.AnnotationOriginalReclaimPolicy)
			return true
		})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("releasing volume %s: %w", volume.Name, err)
		}
	}

	claims, err := h.kube.CoreV1().PersistentVolumeClaims(metav1.NamespaceAll).List(ctx, held)
	if err != nil {
		return fmt.Errorf("listing taken replicas: %w", err)
	}
	for i := range claims.Items {
		claim := &claims.Items[i]
		uid := claim.Labels[replica.LabelCheckoutUID]
		alive, err := h.checkoutAlive(ctx, claim.Annotations[replica.AnnotationCheckout], uid)
		if err != nil {
			return err
		}
		if !alive {
			logger.Info("Returning the replica of an abandoned handout to its pool", "claim", klog.KObj(claim))
			if err := h.untakeClaim(ctx, claim.Namespace, claim.Name, types.UID(uid)); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkoutAlive tells whether the checkout named by key ("<namespace>/<name>/<uid>") still exists.
func (h *Handout) checkoutAlive(ctx context.Context, key, uid string) (bool, error) {
	parts := strings.SplitN(key, "/", 3)
	if len(parts) != 3 || parts[2] != uid {
		// Not written by a handout: leave it alone.
		return true, nil
	}
	checkout, err := h.pvpool.PvpoolV1alpha1().Checkouts(parts[0]).Get(ctx, parts[1], metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("getting checkout %s/%s: %w", parts[0], parts[1], err)
	}
	return string(checkout.UID) == uid, nil
}

// untakeClaim removes the marks of a handout from a replica claim taken by the checkout with uid.
func (h *Handout) untakeClaim(ctx context.Context, namespace, name string, uid types.UID) error {
	claims := h.kube.CoreV1().PersistentVolumeClaims(namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		claim, err := claims.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if claim.Labels[replica.LabelCheckoutUID] != string(uid) {
			return nil
		}
		delete(claim.Labels, replica.LabelCheckoutUID)
		delete(claim.Annotations, replica.AnnotationCheckout)
		_, err = claims.Update(ctx, claim, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("returning replica %s/%s to its pool: %w", namespace, name, err)
	}
	return nil
}
