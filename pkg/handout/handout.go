// Package handout takes an available replica out of a pool and hands it to a checkout as a claim
// bound to the replica's volume. The same function serves the synchronous create request and the
// checkout controller: every step records its outcome on the objects themselves, so a handout cut off
// at any step is finished by the next call (or released, when its checkout is gone).
//
// The steps, for checkout C taking replica claim R bound to volume V:
//  1. take R: annotate it with C's key, an update guarded by R's resourceVersion; only one checkout
//     can win it;
//  2. hold V: label it with C's UID, remember its reclaim policy and set Retain, so that
//  3. deleting R does not delete V;
//  4. create C's claim, owned by C, naming V (it stays Pending: V still refers to R);
//  5. point V at C's claim by UID, taking C's access modes (so a ReadOnlyMany checkout reaches the
//     CSI driver as MULTI_NODE_READER_ONLY), and drop V's label: from here on C's claim is the
//     record of the handout;
//  6. mark V Bound, and only then give it back its reclaim policy: V is never Released with a
//     Delete policy, which would let the provisioner delete it;
//  7. finish the claim's side of the binding as the PV controller would, so the claim is Bound when
//     the request returns, and record the volume in C's status.
//
// V never refers to a claim by name only, so the PV controller cannot bind it to any other claim.
package handout

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"k8s.io/utils/keymutex"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
	"github.com/pvpool/pvpool/pkg/replica"
)

// Annotations the PV controller itself writes when it binds; writing them makes our binding
// indistinguishable from its own, so it never undoes it.
const (
	annBindCompleted      = "pv.kubernetes.io/bind-completed"
	annBoundByController  = "pv.kubernetes.io/bound-by-controller"
	claimKind             = "PersistentVolumeClaim"
	eventReasonCheckedOut = "CheckedOut"
	eventReasonWaiting    = "Waiting"
)

// Handout hands replicas out to checkouts.
type Handout struct {
	kube     kubernetes.Interface
	pvpool   clientset.Interface
	recorder record.EventRecorder

	// poolLocks serializes the takes (step 1) from one pool within this process, so the FIFO order of
	// waiting checkouts holds; across processes the take's resourceVersion guard still keeps every
	// volume to one checkout. The other steps touch only the checkout's own objects and run outside it,
	// so handouts from one pool overlap.
	poolLocks sync.Map
	// checkoutLocks serializes the attempts for one checkout (the create request and the checkout
	// controller). A checkout's lock is always taken before its pool's, never after.
	checkoutLocks keymutex.KeyMutex
}

// New returns a Handout acting through the given clients.
func New(kube kubernetes.Interface, pvpool clientset.Interface, recorder record.EventRecorder) *Handout {
	return &Handout{kube: kube, pvpool: pvpool, recorder: recorder, checkoutLocks: keymutex.NewHashed(64)}
}

// Outcome is what a handout attempt ended with.
type Outcome struct {
	// Checkout is the checkout as stored after the attempt.
	Checkout *v1alpha1.Checkout
	// Acquired is true once the checkout holds a bound claim.
	Acquired bool
	// Reason is the Acquired condition's reason (CheckedOut, NotAvailable, PoolDoesNotExist, Conflict).
	Reason string
	// Message explains Reason to a person.
	Message string
}

// PoolKey identifies the pool a checkout refers to.
func PoolKey(checkout *v1alpha1.Checkout) string {
	return PoolNamespace(checkout) + "/" + checkout.Spec.PoolRef.Name
}

// PoolNamespace is the namespace of the pool a checkout refers to.
func PoolNamespace(checkout *v1alpha1.Checkout) string {
	if checkout.Spec.PoolRef.Namespace != "" {
		return checkout.Spec.PoolRef.Namespace
	}
	return checkout.Namespace
}

// ClaimName is the name of the claim a checkout hands its volume out as.
func ClaimName(checkout *v1alpha1.Checkout) string {
	if checkout.Spec.ClaimName != "" {
		return checkout.Spec.ClaimName
	}
	return checkout.Name
}

func (h *Handout) lockPool(key string) func() {
	lock, _ := h.poolLocks.LoadOrStore(key, &sync.Mutex{})
	lock.(*sync.Mutex).Lock()
	return lock.(*sync.Mutex).Unlock
}

// Acquire gives checkout a volume if it can, finishing any handout already under way for it, and
// records the outcome in the checkout's status. waitingAhead tells whether older checkouts of the same
// pool are still waiting: then a new replica is not taken for this one, so that they are served first.
func (h *Handout) Acquire(ctx context.Context, checkout *v1alpha1.Checkout, waitingAhead bool) (*Outcome, error) {
	logger := klog.FromContext(ctx).WithValues("checkout", klog.KObj(checkout), "pool", PoolKey(checkout))
	ctx = klog.NewContext(ctx, logger)
	if checkout.DeletionTimestamp != nil {
		return &Outcome{Checkout: checkout}, nil
	}
	h.checkoutLocks.LockKey(string(checkout.UID))
	defer func() { _ = h.checkoutLocks.UnlockKey(string(checkout.UID)) }()
	// The caller's copy may be older than an outcome another caller recorded while this one waited
	// for the lock.
	current, err := h.pvpool.PvpoolV1alpha1().Checkouts(checkout.Namespace).Get(ctx, checkout.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if current.UID != checkout.UID {
		return &Outcome{Checkout: checkout}, nil
	}
	if current.DeletionTimestamp != nil {
		return &Outcome{Checkout: current}, nil
	}
	checkout = current

	claimName := ClaimName(checkout)
	claim, err := h.kube.CoreV1().PersistentVolumeClaims(checkout.Namespace).Get(ctx, claimName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		claim = nil
	case err != nil:
		return nil, fmt.Errorf("getting claim %s/%s: %w", checkout.Namespace, claimName, err)
	case !metav1.IsControlledBy(claim, checkout):
		return h.record(ctx, checkout, nil, "Conflict",
			fmt.Sprintf("PersistentVolumeClaim %s/%s already exists and does not belong to this checkout; waiting for it to be deleted", checkout.Namespace, claimName))
	}

	volume, err := h.volumeInHandout(ctx, checkout)
	if err != nil {
		return nil, err
	}
	if volume == nil && claim != nil && claim.Spec.VolumeName != "" {
		// The handout got past step 5: the claim is the checkout's and names its volume.
		volume, err = h.kube.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			// The volume is gone from under the claim; a claim cannot be re-pointed, so it is deleted
			// and the next attempt, once it is gone, hands out a new volume.
			if err := h.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Delete(ctx, claim.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return nil, err
			}
			return h.waiting(ctx, checkout, "NotAvailable", fmt.Sprintf("Volume %s of claim %s no longer exists; a new volume is handed out once the claim is deleted", claim.Spec.VolumeName, claim.Name))
		}
		if err != nil {
			return nil, err
		}
	}
	if volume == nil {
		if waitingAhead {
			return h.waiting(ctx, checkout, "NotAvailable", "older checkouts of pool "+PoolKey(checkout)+" are waiting and are served first")
		}
		var reason, message string
		unlockPool := h.lockPool(PoolKey(checkout))
		volume, reason, message, err = h.takeReplica(ctx, checkout)
		unlockPool()
		if err != nil {
			return nil, err
		}
		if volume == nil {
			return h.waiting(ctx, checkout, reason, message)
		}
	}

	if claim, err = h.handOver(ctx, checkout, volume, claim); err != nil {
		return nil, err
	}
	if claim == nil {
		return h.record(ctx, checkout, nil, "Conflict",
			fmt.Sprintf("PersistentVolumeClaim %s/%s was created by someone else during the handout; the volume is held until it is deleted", checkout.Namespace, claimName))
	}
	return h.record(ctx, checkout, claim, "CheckedOut",
		fmt.Sprintf("Volume %s is bound to PersistentVolumeClaim %s", claim.Spec.VolumeName, claim.Name))
}

// volumeInHandout finds the volume of a handout under way for checkout: either one already held
// (step 2 done) or a replica claim taken for it (step 1 done), which is then held.
func (h *Handout) volumeInHandout(ctx context.Context, checkout *v1alpha1.Checkout) (*corev1.PersistentVolume, error) {
	volumes, err := h.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{replica.LabelCheckoutUID: string(checkout.UID)}.String(),
	})
	if err != nil {
		return nil, fmt.Errorf("listing volumes held for the checkout: %w", err)
	}
	if len(volumes.Items) > 0 {
		return &volumes.Items[0], nil
	}

	claims, err := h.replicaClaims(ctx, checkout)
	if err != nil || claims == nil {
		return nil, err
	}
	key := replica.CheckoutKey(checkout.Namespace, checkout.Name, checkout.UID)
	for _, claim := range claims {
		// A replica claim being deleted was released in step 3 (pvc-protection keeps it a while): its
		// volume is either still labelled, and found above, or already the checkout's.
		if claim.Annotations[replica.AnnotationCheckout] == key && claim.DeletionTimestamp == nil {
			return h.holdVolume(ctx, checkout, claim)
		}
	}
	return nil, nil
}

// replicaClaims lists the claims in the pool's namespace matching its selector, or nil if the pool does
// not exist.
func (h *Handout) replicaClaims(ctx context.Context, checkout *v1alpha1.Checkout) ([]*corev1.PersistentVolumeClaim, error) {
	pool, err := h.pvpool.PvpoolV1alpha1().Pools(PoolNamespace(checkout)).Get(ctx, checkout.Spec.PoolRef.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("getting pool %s: %w", PoolKey(checkout), err)
	}
	selector, err := metav1.LabelSelectorAsSelector(pool.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("pool %s has an invalid selector: %w", PoolKey(checkout), err)
	}
	list, err := h.kube.CoreV1().PersistentVolumeClaims(pool.Namespace).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
	if err != nil {
		return nil, fmt.Errorf("listing replicas of pool %s: %w", PoolKey(checkout), err)
	}
	claims := make([]*corev1.PersistentVolumeClaim, 0, len(list.Items))
	for i := range list.Items {
		if replica.OwnedBy(pool, &list.Items[i]) {
			claims = append(claims, &list.Items[i])
		}
	}
	replica.SortOldestFirst(claims)
	return claims, nil
}

// takeReplica does step 1 on the first available replica it wins, then step 2. It returns a nil
// volume with the waiting reason when there is none.
func (h *Handout) takeReplica(ctx context.Context, checkout *v1alpha1.Checkout) (*corev1.PersistentVolume, string, string, error) {
	claims, err := h.replicaClaims(ctx, checkout)
	if err != nil {
		return nil, "", "", err
	}
	if claims == nil {
		return nil, "PoolDoesNotExist", fmt.Sprintf("Pool %s does not exist", PoolKey(checkout)), nil
	}
	key := replica.CheckoutKey(checkout.Namespace, checkout.Name, checkout.UID)
	for _, candidate := range claims {
		if !replica.IsAvailable(candidate) {
			continue
		}
		taken := candidate.DeepCopy()
		taken.Annotations[replica.AnnotationCheckout] = key
		if taken.Labels == nil {
			taken.Labels = map[string]string{}
		}
		taken.Labels[replica.LabelCheckoutUID] = string(checkout.UID)
		taken, err := h.kube.CoreV1().PersistentVolumeClaims(taken.Namespace).Update(ctx, taken, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			// Another checkout, or the pool controller, changed it first: try the next one.
			continue
		}
		if err != nil {
			return nil, "", "", fmt.Errorf("taking replica %s/%s: %w", candidate.Namespace, candidate.Name, err)
		}
		klog.FromContext(ctx).V(2).Info("Took replica", "claim", klog.KObj(taken), "volume", taken.Spec.VolumeName)
		volume, err := h.holdVolume(ctx, checkout, taken)
		return volume, "", "", err
	}
	return nil, "NotAvailable", fmt.Sprintf("Pool %s has no available replica; the checkout is fulfilled as soon as one is", PoolKey(checkout)), nil
}

// holdVolume does step 2 for a taken replica claim, then step 3. Only a volume still bound to the taken
// claim is held: one that already went on to a claim of the checkout must not be labelled held again,
// or step 3 would delete that claim.
func (h *Handout) holdVolume(ctx context.Context, checkout *v1alpha1.Checkout, taken *corev1.PersistentVolumeClaim) (*corev1.PersistentVolume, error) {
	held, err := h.updateVolume(ctx, taken.Spec.VolumeName, func(volume *corev1.PersistentVolume) bool {
		if ref := volume.Spec.ClaimRef; ref == nil || ref.UID != taken.UID {
			return false
		}
		if volume.Labels == nil {
			volume.Labels = map[string]string{}
		}
		if volume.Annotations == nil {
			volume.Annotations = map[string]string{}
		}
		volume.Labels[replica.LabelCheckoutUID] = string(checkout.UID)
		volume.Annotations[replica.AnnotationCheckout] = replica.CheckoutKey(checkout.Namespace, checkout.Name, checkout.UID)
		if _, kept := volume.Annotations[replica.AnnotationOriginalReclaimPolicy]; !kept {
			volume.Annotations[replica.AnnotationOriginalReclaimPolicy] = string(volume.Spec.PersistentVolumeReclaimPolicy)
		}
		volume.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("holding volume %s of replica %s/%s: %w", taken.Spec.VolumeName, taken.Namespace, taken.Name, err)
	}
	if held.Labels[replica.LabelCheckoutUID] != string(checkout.UID) {
		return nil, fmt.Errorf("volume %s is no longer bound to replica %s/%s", held.Name, taken.Namespace, taken.Name)
	}
	return held, h.releaseReplicaClaim(ctx, held)
}

// releaseReplicaClaim does step 3: it deletes the replica claim a held volume still refers to.
func (h *Handout) releaseReplicaClaim(ctx context.Context, held *corev1.PersistentVolume) error {
	ref := held.Spec.ClaimRef
	if ref == nil || ref.UID == "" || ref.Namespace == "" {
		return nil
	}
	uid := ref.UID
	err := h.kube.CoreV1().PersistentVolumeClaims(ref.Namespace).Delete(ctx, ref.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("releasing replica %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	return nil
}

// updateVolume applies mutate to the current volume and stores it, retrying on conflicts with the
// PV controller; mutate returns false when there is nothing to change.
func (h *Handout) updateVolume(ctx context.Context, name string, mutate func(*corev1.PersistentVolume) bool) (*corev1.PersistentVolume, error) {
	volumes := h.kube.CoreV1().PersistentVolumes()
	var updated *corev1.PersistentVolume
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		volume, err := volumes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !mutate(volume) {
			updated = volume
			return nil
		}
		updated, err = volumes.Update(ctx, volume, metav1.UpdateOptions{})
		return err
	})
	return updated, err
}

// handOver does steps 4 to 6 for a held volume (or finishes them for the checkout's own claim): the
// volume ends bound to the checkout's claim. It returns nil when a claim of that name exists that is
// not the checkout's; the volume then stays held.
func (h *Handout) handOver(ctx context.Context, checkout *v1alpha1.Checkout, volume *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim) (*corev1.PersistentVolumeClaim, error) {
	claimName := ClaimName(checkout)
	claims := h.kube.CoreV1().PersistentVolumeClaims(checkout.Namespace)
	var err error

	if _, held := volume.Labels[replica.LabelCheckoutUID]; held {
		// Repeat step 3 in case the handout stopped between steps 2 and 3.
		if err := h.releaseReplicaClaim(ctx, volume); err != nil {
			return nil, err
		}
	}

	if claim == nil {
		claim, err = claims.Create(ctx, newClaim(checkout, volume), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			claim, err = claims.Get(ctx, claimName, metav1.GetOptions{})
			if err == nil && !metav1.IsControlledBy(claim, checkout) {
				return nil, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("creating claim %s/%s: %w", checkout.Namespace, claimName, err)
		}
	}

	volumeName := volume.Name
	volume, err = h.updateVolume(ctx, volumeName, func(volume *corev1.PersistentVolume) bool {
		before := volume.DeepCopy()
		if ref := volume.Spec.ClaimRef; ref == nil || ref.UID != claim.UID {
			volume.Spec.ClaimRef = &corev1.ObjectReference{
				Kind: claimKind, APIVersion: "v1",
				Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID, ResourceVersion: claim.ResourceVersion,
			}
		}
		// A volume's source is immutable, so CSI readOnly cannot be turned on here; the access modes
		// reach the CSI driver instead (ReadOnlyMany is MULTI_NODE_READER_ONLY), which publishes the
		// volume read-only.
		volume.Spec.AccessModes = checkout.Spec.AccessModes
		delete(volume.Annotations, annBoundByController)
		delete(volume.Labels, replica.LabelCheckoutUID)
		return !apiequality.Semantic.DeepEqual(before, volume)
	})
	if err != nil {
		return nil, fmt.Errorf("pointing volume %s at claim %s/%s: %w", volumeName, claim.Namespace, claim.Name, err)
	}
	if volume, err = h.markVolumeBound(ctx, volume); err != nil {
		return nil, err
	}
	// Only now may the volume have its reclaim policy back: while it was Released (its replica claim
	// gone) a Delete policy would have let the provisioner delete it under the new claim.
	volume, err = h.updateVolume(ctx, volumeName, func(volume *corev1.PersistentVolume) bool {
		original, ok := volume.Annotations[replica.AnnotationOriginalReclaimPolicy]
		if !ok || volume.Status.Phase != corev1.VolumeBound || string(volume.Spec.PersistentVolumeReclaimPolicy) == original {
			return false
		}
		volume.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimPolicy(original)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("restoring the reclaim policy of volume %s: %w", volumeName, err)
	}
	if volume.Status.Phase != corev1.VolumeBound {
		return nil, fmt.Errorf("volume %s is %s, not Bound, after binding it", volumeName, volume.Status.Phase)
	}
	return h.bindClaim(ctx, claim, volume)
}

func newClaim(checkout *v1alpha1.Checkout, volume *corev1.PersistentVolume) *corev1.PersistentVolumeClaim {
	isController := true
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:      ClaimName(checkout),
			Namespace: checkout.Namespace,
			Annotations: map[string]string{
				replica.AnnotationCheckout: replica.CheckoutKey(checkout.Namespace, checkout.Name, checkout.UID),
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: v1alpha1.SchemeGroupVersion.String(),
				Kind:       "Checkout",
				Name:       checkout.Name,
				UID:        checkout.UID,
				Controller: &isController,
			}},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: checkout.Spec.AccessModes,
			VolumeName:  volume.Name,
			VolumeMode:  volume.Spec.VolumeMode,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: volume.Spec.Capacity[corev1.ResourceStorage]},
			},
		},
	}
	storageClass := volume.Spec.StorageClassName
	claim.Spec.StorageClassName = &storageClass
	return claim
}

// markVolumeBound sets the volume's phase to Bound, as the PV controller would on seeing its claim.
func (h *Handout) markVolumeBound(ctx context.Context, volume *corev1.PersistentVolume) (*corev1.PersistentVolume, error) {
	volumes := h.kube.CoreV1().PersistentVolumes()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if volume.Status.Phase == corev1.VolumeBound {
			return nil
		}
		bound := volume.DeepCopy()
		bound.Status.Phase = corev1.VolumeBound
		bound.Status.Message, bound.Status.Reason = "", ""
		updated, err := volumes.UpdateStatus(ctx, bound, metav1.UpdateOptions{})
		if err == nil {
			volume = updated
			return nil
		}
		if current, getErr := volumes.Get(ctx, volume.Name, metav1.GetOptions{}); getErr == nil {
			volume = current
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("marking volume %s bound: %w", volume.Name, err)
	}
	return volume, nil
}

// bindClaim completes the claim's side of the binding: bind-completed, phase Bound with the volume's
// capacity and access modes.
func (h *Handout) bindClaim(ctx context.Context, claim *corev1.PersistentVolumeClaim, volume *corev1.PersistentVolume) (*corev1.PersistentVolumeClaim, error) {
	claims := h.kube.CoreV1().PersistentVolumeClaims(claim.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var err error
		if claim.Annotations[annBindCompleted] != "yes" {
			bound := claim.DeepCopy()
			if bound.Annotations == nil {
				bound.Annotations = map[string]string{}
			}
			bound.Annotations[annBindCompleted] = "yes"
			if claim, err = claims.Update(ctx, bound, metav1.UpdateOptions{}); err != nil {
				return h.refreshOnConflict(ctx, &claim, bound, err)
			}
		}
		if claim.Status.Phase != corev1.ClaimBound {
			bound := claim.DeepCopy()
			bound.Status.Phase = corev1.ClaimBound
			bound.Status.AccessModes = volume.Spec.AccessModes
			bound.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: volume.Spec.Capacity[corev1.ResourceStorage]}
			if claim, err = claims.UpdateStatus(ctx, bound, metav1.UpdateOptions{}); err != nil {
				return h.refreshOnConflict(ctx, &claim, bound, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("binding claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	return claim, nil
}

// refreshOnConflict reloads *claim after a failed update of attempted, so a conflict is retried on the
// current object.
func (h *Handout) refreshOnConflict(ctx context.Context, claim **corev1.PersistentVolumeClaim, attempted *corev1.PersistentVolumeClaim, err error) error {
	if !apierrors.IsConflict(err) {
		*claim = attempted
		return err
	}
	current, getErr := h.kube.CoreV1().PersistentVolumeClaims(attempted.Namespace).Get(ctx, attempted.Name, metav1.GetOptions{})
	if getErr != nil {
		*claim = attempted
		return getErr
	}
	*claim = current
	return err
}

func (h *Handout) waiting(ctx context.Context, checkout *v1alpha1.Checkout, reason, message string) (*Outcome, error) {
	return h.record(ctx, checkout, nil, reason, message)
}

// record writes the outcome into the checkout's status and Acquired condition (only when it changed)
// and emits an Event.
func (h *Handout) record(ctx context.Context, checkout *v1alpha1.Checkout, claim *corev1.PersistentVolumeClaim, reason, message string) (*Outcome, error) {
	acquired := claim != nil
	status := corev1.ConditionUnknown
	if acquired {
		status = corev1.ConditionTrue
	}
	updated := checkout.DeepCopy()
	if acquired {
		updated.Status.VolumeName = claim.Spec.VolumeName
		updated.Status.VolumeClaimRef = corev1.LocalObjectReference{Name: claim.Name}
	} else {
		updated.Status.VolumeName = ""
		updated.Status.VolumeClaimRef = corev1.LocalObjectReference{}
	}
	setCondition(&updated.Status, v1alpha1.CheckoutCondition{Type: v1alpha1.CheckoutAcquired, Status: status, Reason: reason, Message: message})

	outcome := &Outcome{Checkout: checkout, Acquired: acquired, Reason: reason, Message: message}
	if equalStatus(checkout.Status, updated.Status) {
		return outcome, nil
	}
	stored, err := h.pvpool.PvpoolV1alpha1().Checkouts(checkout.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("recording %s in the checkout's status: %w", reason, err)
	}
	outcome.Checkout = stored
	if h.recorder != nil {
		eventType, eventReason := corev1.EventTypeNormal, eventReasonCheckedOut
		if !acquired {
			eventType, eventReason = corev1.EventTypeWarning, eventReasonWaiting
		}
		h.recorder.Event(stored, eventType, eventReason, message)
	}
	klog.FromContext(ctx).V(2).Info("Recorded handout outcome", "reason", reason, "volume", updated.Status.VolumeName)
	return outcome, nil
}

func setCondition(status *v1alpha1.CheckoutStatus, condition v1alpha1.CheckoutCondition) {
	for i := range status.Conditions {
		existing := &status.Conditions[i]
		if existing.Type != condition.Type {
			continue
		}
		if existing.Status == condition.Status {
			condition.LastTransitionTime = existing.LastTransitionTime
		} else {
			condition.LastTransitionTime = metav1.Now()
		}
		*existing = condition
		return
	}
	condition.LastTransitionTime = metav1.Now()
	status.Conditions = append(status.Conditions, condition)
}

func equalStatus(a, b v1alpha1.CheckoutStatus) bool {
	if a.VolumeName != b.VolumeName || a.VolumeClaimRef != b.VolumeClaimRef || len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for i := range a.Conditions {
		x, y := a.Conditions[i], b.Conditions[i]
		if x.Type != y.Type || x.Status != y.Status || x.Reason != y.Reason || x.Message != y.Message {
			return false
		}
	}
	return true
}

// WaitingOrder sorts checkouts in the order they are served: oldest first.
func WaitingOrder(checkouts []*v1alpha1.Checkout) {
	sort.SliceStable(checkouts, func(i, j int) bool {
		ti, tj := checkouts[i].CreationTimestamp, checkouts[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return strings.Compare(checkouts[i].Namespace+"/"+checkouts[i].Name, checkouts[j].Namespace+"/"+checkouts[j].Name) < 0
	})
}

// IsAcquired tells whether a checkout's status says it holds a volume.
func IsAcquired(checkout *v1alpha1.Checkout) bool {
	condition := acquiredCondition(checkout)
	return condition != nil && condition.Status == corev1.ConditionTrue
}

// IsWaiting tells whether a checkout's status records that it waits for a volume.
func IsWaiting(checkout *v1alpha1.Checkout) bool {
	condition := acquiredCondition(checkout)
	return condition != nil && condition.Status != corev1.ConditionTrue
}

func acquiredCondition(checkout *v1alpha1.Checkout) *v1alpha1.CheckoutCondition {
	for i := range checkout.Status.Conditions {
		if checkout.Status.Conditions[i].Type == v1alpha1.CheckoutAcquired {
			return &checkout.Status.Conditions[i]
		}
	}
	return nil
}
