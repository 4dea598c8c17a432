package pool

import (
	"context"
	"errors"
	"fmt"
	"sort"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/replica"
)

// Reasons a replica is stale, used in StaleReplica events.
const (
	staleLost          = "Lost"
	staleInitJobFailed = "InitJobFailed"
	staleBindFailed    = "BindFailed"
)

// replicaView is one replica claim as this reconcile sees it, with the write (if any) that moves it
// forward.
type replicaView struct {
	claim *corev1.PersistentVolumeClaim

	// available: the claim carries the available annotation.
	available bool
	// becomesAvailable: next marks the claim available.
	becomesAvailable bool
	// cleanup: next deletes the finished job of an available replica, or, with becomesAvailable,
	// a later reconcile will.
	cleanup bool

	// staleReason is set when the replica must be replaced; jobFailed when that is because its job
	// failed, which backs off the pool's replacements.
	staleReason  string
	staleMessage string
	jobFailed    bool

	next func(ctx context.Context) error
}

// replicaClaims lists pool's replicas: claims matching its selector that it controls and that no
// handout has taken. cached names every claim the pool controls, taken or not.
func (c *Controller) replicaClaims(pool *v1alpha1.Pool) (replicas []*corev1.PersistentVolumeClaim, cached map[string]bool, err error) {
	selector, err := metav1.LabelSelectorAsSelector(pool.Spec.Selector)
	if err != nil {
		return nil, nil, err
	}
	claims, err := c.claimLister.PersistentVolumeClaims(pool.Namespace).List(selector)
	if err != nil {
		return nil, nil, err
	}
	cached = map[string]bool{}
	for _, claim := range claims {
		if !replica.OwnedBy(pool, claim) {
			continue
		}
		cached[claim.Name] = true
		if !replica.IsTaken(claim) {
			replicas = append(replicas, claim)
		}
	}
	return replicas, cached, nil
}

// newReplicaClaim builds a new replica claim from pool's template, controlled by the pool.
func newReplicaClaim(pool *v1alpha1.Pool) *corev1.PersistentVolumeClaim {
	template := &pool.Spec.Template
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    pool.Name + "-",
			Namespace:       pool.Namespace,
			Labels:          copyMap(template.Labels),
			Annotations:     copyMap(template.Annotations),
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(pool, v1alpha1.SchemeGroupVersion.WithKind("Pool"))},
		},
		Spec: *template.Spec.DeepCopy(),
	}
	// A template cannot make a replica available or taken before it exists.
	for _, annotation := range []string{replica.AnnotationAvailable, replica.AnnotationCheckout, replica.AnnotationOriginalReclaimPolicy} {
		delete(claim.Annotations, annotation)
	}
	return claim
}

// assess classifies claim and decides the write that moves it forward.
func (c *Controller) assess(ctx context.Context, pool *v1alpha1.Pool, claim *corev1.PersistentVolumeClaim) (*replicaView, error) {
	view := &replicaView{claim: claim}
	if reason, err := c.lost(ctx, claim); err != nil {
		return nil, err
	} else if reason != "" {
		view.staleReason, view.staleMessage = staleLost, reason
		return view, nil
	}

	bound := claim.Status.Phase == corev1.ClaimBound && claim.Spec.VolumeName != ""
	if claim.Annotations[replica.AnnotationAvailable] == "true" {
		view.available = true
		// The job is deleted only once the cache shows the claim available: a reconcile reading a
		// claim older than its job could otherwise find the job gone and run it again.
		var leftover []*batchv1.Job
		for _, role := range []string{jobRoleInit, jobRoleBind} {
			if job, state := c.jobFor(claim, role); state != jobMissing && state != jobForeign && job.DeletionTimestamp == nil {
				leftover = append(leftover, job)
			}
		}
		if len(leftover) > 0 {
			view.cleanup = true
			view.next = func(ctx context.Context) error {
				for _, job := range leftover {
					if err := c.deleteJob(ctx, job); err != nil {
						return err
					}
				}
				return nil
			}
		}
		return view, nil
	}

	if pool.Spec.InitJob != nil {
		job, state := c.jobFor(claim, jobRoleInit)
		switch state {
		case jobMissing:
			view.next = func(ctx context.Context) error { return c.createJob(ctx, newInitJob(pool, claim)) }
		case jobSucceeded:
			if bound {
				view.becomesAvailable, view.cleanup = true, true
				view.next = func(ctx context.Context) error { return c.markAvailable(ctx, claim) }
			}
		case jobFailed:
			view.staleReason, view.staleMessage, view.jobFailed = staleInitJobFailed, jobFailure(job), true
		}
		return view, nil
	}

	job, state := c.jobFor(claim, jobRoleBind)
	if bound {
		// The binder pod may still be using the volume; the volume goes out once it is done.
		if state != jobRunning && state != jobForeign {
			view.becomesAvailable, view.cleanup = true, job != nil
			view.next = func(ctx context.Context) error { return c.markAvailable(ctx, claim) }
		}
		return view, nil
	}
	switch state {
	case jobMissing:
		if c.waitsForFirstConsumer(ctx, claim) {
			view.next = func(ctx context.Context) error { return c.createJob(ctx, newBinderJob(claim, &c.options)) }
		}
	case jobFailed:
		view.staleReason, view.staleMessage, view.jobFailed = staleBindFailed, jobFailure(job), true
	}
	return view, nil
}

// lost tells why claim's volume is gone for good, or "" if it is not.
func (c *Controller) lost(ctx context.Context, claim *corev1.PersistentVolumeClaim) (string, error) {
	if claim.Status.Phase == corev1.ClaimLost {
		return fmt.Sprintf("claim %s lost its volume %q", claim.Name, claim.Spec.VolumeName), nil
	}
	if claim.Status.Phase != corev1.ClaimBound || claim.Spec.VolumeName == "" {
		return "", nil
	}
	volume, err := c.volumeLister.Get(claim.Spec.VolumeName)
	if apierrors.IsNotFound(err) {
		// The cache may not have seen a volume provisioned a moment ago; only the server can say it
		// is gone.
		volume, err = c.kubeClient.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
	}
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Sprintf("volume %s of claim %s no longer exists", claim.Spec.VolumeName, claim.Name), nil
	case err != nil:
		return "", err
	case volume.Status.Phase == corev1.VolumeFailed:
		return fmt.Sprintf("volume %s of claim %s failed: %s", volume.Name, claim.Name, volume.Status.Message), nil
	case volume.Spec.ClaimRef != nil && volume.Spec.ClaimRef.UID != "" && volume.Spec.ClaimRef.UID != claim.UID:
		return fmt.Sprintf("volume %s of claim %s is bound to another claim", volume.Name, claim.Name), nil
	}
	return "", nil
}

// waitsForFirstConsumer tells whether claim's class binds only once a pod uses the claim.
func (c *Controller) waitsForFirstConsumer(ctx context.Context, claim *corev1.PersistentVolumeClaim) bool {
	className := ptr.Deref(claim.Spec.StorageClassName, "")
	if className == "" {
		return false
	}
	class, err := c.classLister.Get(className)
	if err != nil {
		klog.FromContext(ctx).V(4).Info("Storage class of replica not found", "claim", klog.KObj(claim), "storageClass", className)
		return false
	}
	return class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
}

// templateProblem tells why claims made from pool's template cannot work, or "" if they can.
func (c *Controller) templateProblem(ctx context.Context, pool *v1alpha1.Pool) (string, error) {
	className := ptr.Deref(pool.Spec.Template.Spec.StorageClassName, "")
	if className == "" {
		return "", nil
	}
	_, err := c.classLister.Get(className)
	if apierrors.IsNotFound(err) {
		_, err = c.kubeClient.StorageV1().StorageClasses().Get(ctx, className, metav1.GetOptions{})
	}
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Sprintf("storage class %q does not exist", className), nil
	case err != nil:
		return "", err
	}
	return "", nil
}

// errNamespaceTerminating: a write was refused because the namespace, and the pool with it, is
// going away. Nothing to retry, nothing done.
var errNamespaceTerminating = errors.New("namespace is terminating")

// invalidError is a write the API server rejected as invalid: retrying will not help until the pool
// changes.
type invalidError struct{ err error }

func (e invalidError) Error() string { return e.err.Error() }
func (e invalidError) Unwrap() error { return e.err }

func (c *Controller) createClaim(ctx context.Context, pool *v1alpha1.Pool) error {
	created, err := c.kubeClient.CoreV1().PersistentVolumeClaims(pool.Namespace).Create(ctx, newReplicaClaim(pool), metav1.CreateOptions{})
	if apierrors.IsInvalid(err) {
		return invalidError{fmt.Errorf("creating a replica claim: %w", err)}
	}
	if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
		// The namespace, and the pool with it, is going away: nothing to retry.
		return errNamespaceTerminating
	}
	if err != nil {
		return fmt.Errorf("creating a replica claim: %w", err)
	}
	c.inflight.created(poolKey(pool.Namespace, pool.Name), created.Name)
	klog.FromContext(ctx).V(2).Info("Created replica", "claim", klog.KObj(created))
	return nil
}

func (c *Controller) createJob(ctx context.Context, job *batchv1.Job) error {
	_, err := c.kubeClient.BatchV1().Jobs(job.Namespace).Create(ctx, job, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err):
		// The cache is behind; the next reconcile sees the job.
		return nil
	case apierrors.IsInvalid(err):
		return invalidError{fmt.Errorf("creating job %s: %w", job.Name, err)}
	case err != nil:
		return fmt.Errorf("creating job %s: %w", job.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Created replica job", "job", klog.KObj(job), "role", job.Labels[LabelJobRole])
	return nil
}

// deleteJob deletes job and, in the background, its pods: a pod that still uses the claim would keep
// the claim from being deleted.
func (c *Controller) deleteJob(ctx context.Context, job *batchv1.Job) error {
	err := c.kubeClient.BatchV1().Jobs(job.Namespace).Delete(ctx, job.Name, metav1.DeleteOptions{
		PropagationPolicy: ptr.To(metav1.DeletePropagationBackground),
		Preconditions:     &metav1.Preconditions{UID: ptr.To(job.UID)},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting job %s: %w", job.Name, err)
	}
	return nil
}

// markAvailable records on claim that it may be handed out; its finished job goes in a later
// reconcile. The update carries the claim's resourceVersion: if a handout touched the claim
// meanwhile it fails with a conflict and the next reconcile looks again.
func (c *Controller) markAvailable(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	updated := claim.DeepCopy()
	if updated.Annotations == nil {
		updated.Annotations = map[string]string{}
	}
	updated.Annotations[replica.AnnotationAvailable] = "true"
	if _, err := c.kubeClient.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("marking replica %s available: %w", claim.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Replica is available", "claim", klog.KObj(claim))
	return nil
}

// deleteReplica deletes claim's jobs, whose pods would keep the claim in use, then the claim. The
// claim's delete is guarded by its resourceVersion so that a claim a handout took after this
// reconcile read it is never deleted.
func (c *Controller) deleteReplica(ctx context.Context, pool *v1alpha1.Pool, claim *corev1.PersistentVolumeClaim) error {
	for _, role := range []string{jobRoleInit, jobRoleBind} {
		if job, state := c.jobFor(claim, role); state != jobMissing && state != jobForeign {
			if err := c.deleteJob(ctx, job); err != nil {
				return err
			}
		}
	}
	err := c.kubeClient.CoreV1().PersistentVolumeClaims(claim.Namespace).Delete(ctx, claim.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: ptr.To(claim.UID), ResourceVersion: ptr.To(claim.ResourceVersion)},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting replica %s: %w", claim.Name, err)
	}
	c.inflight.deleted(poolKey(pool.Namespace, pool.Name), claim.UID)
	klog.FromContext(ctx).V(2).Info("Deleted replica", "claim", klog.KObj(claim))
	return nil
}

// scaleDownOrder sorts replicas in the order they go when the pool shrinks: replicas not yet
// available first, as they cost the least to lose, then the newest.
func scaleDownOrder(views []*replicaView) {
	sort.SliceStable(views, func(i, j int) bool {
		ai := views[i].available || views[i].becomesAvailable
		aj := views[j].available || views[j].becomesAvailable
		if ai != aj {
			return !ai
		}
		ti, tj := views[i].claim.CreationTimestamp, views[j].claim.CreationTimestamp
		if !ti.Equal(&tj) {
			return tj.Before(&ti)
		}
		return views[i].claim.Name > views[j].claim.Name
	})
}
