package handout

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	pvpoolfake "github.com/pvpool/pvpool/pkg/generated/clientset/versioned/fake"
	"github.com/pvpool/pvpool/pkg/replica"
)

// world is one pool with one available replica claim bound to its volume, and one checkout of it.
type world struct {
	kube     *kubefake.Clientset
	pvpool   *pvpoolfake.Clientset
	handout  *Handout
	pool     *v1alpha1.Pool
	replica  *corev1.PersistentVolumeClaim
	volume   *corev1.PersistentVolume
	checkout *v1alpha1.Checkout
}

func newWorld(t *testing.T) *world {
	t.Helper()
	isController := true
	pool := &v1alpha1.Pool{
		ObjectMeta: metav1.ObjectMeta{Name: "pool", Namespace: "storage", UID: "pool-uid"},
		Spec: v1alpha1.PoolSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "pool"}},
		},
	}
	replicaClaim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: "pool-abcde", Namespace: "storage", UID: "replica-uid",
			Labels:          map[string]string{"pool": "pool"},
			Annotations:     map[string]string{replica.AnnotationAvailable: "true"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "pvpool.puppet.com/v1alpha1", Kind: "Pool", Name: "pool", UID: "pool-uid", Controller: &isController}},
		},
		Spec:   corev1.PersistentVolumeClaimSpec{VolumeName: "pv-1", AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
	block := corev1.PersistentVolumeBlock
	volume := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-1", UID: "pv-uid"},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              "fast",
			VolumeMode:                    &block,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "storage", Name: "pool-abcde", UID: "replica-uid"},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "subprovisioner.gitlab.io", VolumeHandle: "v1"}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	checkout := &v1alpha1.Checkout{
		ObjectMeta: metav1.ObjectMeta{Name: "job", Namespace: "team", UID: "checkout-uid"},
		Spec: v1alpha1.CheckoutSpec{
			PoolRef:     v1alpha1.PoolReference{Namespace: "storage", Name: "pool"},
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
		},
	}
	kube := kubefake.NewClientset(replicaClaim, volume)
	kube.PrependReactor("create", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if accessor, err := meta.Accessor(action.(k8stesting.CreateAction).GetObject()); err == nil && accessor.GetUID() == "" {
			accessor.SetUID(uuid.NewUUID())
		}
		return false, nil, nil
	})
	pvpool := pvpoolfake.NewClientset(pool, checkout)
	return &world{kube: kube, pvpool: pvpool, handout: New(kube, pvpool, nil), pool: pool, replica: replicaClaim, volume: volume, checkout: checkout}
}

// interruptions put the world in the state a handout leaves when it stops after each step.
var interruptions = []struct {
	name string
	stop func(t *testing.T, w *world)
}{
	{"before anything", func(*testing.T, *world) {}},
	{"after taking the replica", takeStep},
	{"after holding the volume", func(t *testing.T, w *world) { takeStep(t, w); holdStep(t, w) }},
	{"after releasing the replica claim", func(t *testing.T, w *world) { takeStep(t, w); holdStep(t, w); releaseStep(t, w) }},
	{"after creating the claim", func(t *testing.T, w *world) {
		takeStep(t, w)
		holdStep(t, w)
		releaseStep(t, w)
		createClaimStep(t, w)
	}},
	{"after pointing the volume at the claim", func(t *testing.T, w *world) {
		takeStep(t, w)
		holdStep(t, w)
		releaseStep(t, w)
		claim := createClaimStep(t, w)
		volume := w.getVolume(t)
		volume.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "team", Name: "job", UID: claim.UID}
		volume.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
		delete(volume.Labels, replica.LabelCheckoutUID)
		w.updateVolume(t, volume)
	}},
}

func takeStep(t *testing.T, w *world) {
	claim, err := w.kube.CoreV1().PersistentVolumeClaims("storage").Get(context.Background(), w.replica.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claim.Annotations[replica.AnnotationCheckout] = replica.CheckoutKey("team", "job", w.checkout.UID)
	claim.Labels[replica.LabelCheckoutUID] = string(w.checkout.UID)
	if _, err := w.kube.CoreV1().PersistentVolumeClaims("storage").Update(context.Background(), claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func holdStep(t *testing.T, w *world) {
	volume := w.getVolume(t)
	volume.Labels = map[string]string{replica.LabelCheckoutUID: string(w.checkout.UID)}
	volume.Annotations = map[string]string{
		replica.AnnotationCheckout:              replica.CheckoutKey("team", "job", w.checkout.UID),
		replica.AnnotationOriginalReclaimPolicy: "Delete",
	}
	volume.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	w.updateVolume(t, volume)
}

func releaseStep(t *testing.T, w *world) {
	if err := w.kube.CoreV1().PersistentVolumeClaims("storage").Delete(context.Background(), w.replica.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createClaimStep(t *testing.T, w *world) *corev1.PersistentVolumeClaim {
	claim, err := w.kube.CoreV1().PersistentVolumeClaims("team").Create(context.Background(), newClaim(w.checkout, w.getVolume(t)), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return claim
}

func (w *world) getVolume(t *testing.T) *corev1.PersistentVolume {
	volume, err := w.kube.CoreV1().PersistentVolumes().Get(context.Background(), w.volume.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return volume
}

func (w *world) updateVolume(t *testing.T, volume *corev1.PersistentVolume) {
	if _, err := w.kube.CoreV1().PersistentVolumes().Update(context.Background(), volume, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestAcquireFinishesAHandoutStoppedAtAnyStep(t *testing.T) {
	for _, interruption := range interruptions {
		t.Run(interruption.name, func(t *testing.T) {
			w := newWorld(t)
			interruption.stop(t, w)
			outcome, err := w.handout.Acquire(context.Background(), w.checkout, false)
			if err != nil {
				t.Fatal(err)
			}
			if !outcome.Acquired || outcome.Reason != "CheckedOut" {
				t.Fatalf("outcome %+v, want CheckedOut", outcome)
			}
			claim, err := w.kube.CoreV1().PersistentVolumeClaims("team").Get(context.Background(), "job", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			volume := w.getVolume(t)
			if claim.Spec.VolumeName != "pv-1" || claim.Status.Phase != corev1.ClaimBound || claim.Annotations["pv.kubernetes.io/bind-completed"] != "yes" {
				t.Errorf("claim: volume %q phase %q annotations %v", claim.Spec.VolumeName, claim.Status.Phase, claim.Annotations)
			}
			if fmt.Sprint(claim.Status.AccessModes) != "[ReadOnlyMany]" || *claim.Spec.VolumeMode != corev1.PersistentVolumeBlock ||
				claim.Status.Capacity.Storage().String() != "2Gi" || *claim.Spec.StorageClassName != "fast" {
				t.Errorf("claim does not carry the volume's mode, capacity, class and the checkout's access modes: %+v", claim)
			}
			if volume.Spec.ClaimRef.UID != claim.UID || volume.Status.Phase != corev1.VolumeBound {
				t.Errorf("volume bound to %+v, phase %s", volume.Spec.ClaimRef, volume.Status.Phase)
			}
			if volume.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || fmt.Sprint(volume.Spec.AccessModes) != "[ReadOnlyMany]" {
				t.Errorf("volume reclaim policy %s, access modes %v; want Delete, [ReadOnlyMany]", volume.Spec.PersistentVolumeReclaimPolicy, volume.Spec.AccessModes)
			}
			if volume.Spec.CSI.ReadOnly {
				t.Error("the volume's source was changed; kube-apiserver refuses that")
			}
			if _, held := volume.Labels[replica.LabelCheckoutUID]; held {
				t.Error("volume still labelled held")
			}
			if _, err := w.kube.CoreV1().PersistentVolumeClaims("storage").Get(context.Background(), w.replica.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("replica claim still exists: %v", err)
			}
			stored, err := w.pvpool.PvpoolV1alpha1().Checkouts("team").Get(context.Background(), "job", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if stored.Status.VolumeName != "pv-1" || stored.Status.VolumeClaimRef.Name != "job" || !IsAcquired(stored) {
				t.Errorf("checkout status %+v", stored.Status)
			}
			// Acquiring again changes nothing.
			again, err := w.handout.Acquire(context.Background(), stored, false)
			if err != nil || !again.Acquired || again.Checkout.ResourceVersion != stored.ResourceVersion {
				t.Errorf("second Acquire: %+v, %v", again, err)
			}
		})
	}
}

func TestReleaseAbandonedGivesBackWhatADeletedCheckoutHeld(t *testing.T) {
	for i, interruption := range interruptions {
		t.Run(interruption.name, func(t *testing.T) {
			w := newWorld(t)
			interruption.stop(t, w)
			if err := w.pvpool.PvpoolV1alpha1().Checkouts("team").Delete(context.Background(), "job", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := w.handout.ReleaseAbandoned(context.Background()); err != nil {
				t.Fatal(err)
			}
			volume := w.getVolume(t)
			if volume.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
				t.Errorf("volume reclaim policy %s, want its original Delete", volume.Spec.PersistentVolumeReclaimPolicy)
			}
			if _, held := volume.Labels[replica.LabelCheckoutUID]; held {
				t.Error("volume still labelled held")
			}
			claim, err := w.kube.CoreV1().PersistentVolumeClaims("storage").Get(context.Background(), w.replica.Name, metav1.GetOptions{})
			replicaReleased := i >= 3
			switch {
			case replicaReleased && !apierrors.IsNotFound(err):
				t.Errorf("replica claim reappeared: %v", err)
			case !replicaReleased && err != nil:
				t.Fatal(err)
			case !replicaReleased && !replica.IsAvailable(claim):
				t.Errorf("replica not returned to the pool: annotations %v labels %v", claim.Annotations, claim.Labels)
			}
		})
	}
}

func TestAcquireWaitsAndConflicts(t *testing.T) {
	t.Run("no pool", func(t *testing.T) {
		w := newWorld(t)
		if err := w.pvpool.PvpoolV1alpha1().Pools("storage").Delete(context.Background(), "pool", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		outcome, err := w.handout.Acquire(context.Background(), w.checkout, false)
		if err != nil || outcome.Acquired || outcome.Reason != "PoolDoesNotExist" {
			t.Fatalf("outcome %+v, %v; want PoolDoesNotExist", outcome, err)
		}
	})
	t.Run("older checkouts waiting", func(t *testing.T) {
		w := newWorld(t)
		outcome, err := w.handout.Acquire(context.Background(), w.checkout, true)
		if err != nil || outcome.Acquired || outcome.Reason != "NotAvailable" {
			t.Fatalf("outcome %+v, %v; want NotAvailable", outcome, err)
		}
		if claim, _ := w.kube.CoreV1().PersistentVolumeClaims("storage").Get(context.Background(), w.replica.Name, metav1.GetOptions{}); replica.IsTaken(claim) {
			t.Error("the replica was taken for a checkout that must wait its turn")
		}
	})
	t.Run("replica of another pool with the same selector", func(t *testing.T) {
		w := newWorld(t)
		claim, _ := w.kube.CoreV1().PersistentVolumeClaims("storage").Get(context.Background(), w.replica.Name, metav1.GetOptions{})
		claim.OwnerReferences[0].UID = types.UID("other-pool-uid")
		if _, err := w.kube.CoreV1().PersistentVolumeClaims("storage").Update(context.Background(), claim, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		outcome, err := w.handout.Acquire(context.Background(), w.checkout, false)
		if err != nil || outcome.Acquired || outcome.Reason != "NotAvailable" {
			t.Fatalf("outcome %+v, %v; want NotAvailable", outcome, err)
		}
	})
	t.Run("claim name taken", func(t *testing.T) {
		w := newWorld(t)
		foreign := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "job", Namespace: "team"}}
		if _, err := w.kube.CoreV1().PersistentVolumeClaims("team").Create(context.Background(), foreign, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		outcome, err := w.handout.Acquire(context.Background(), w.checkout, false)
		if err != nil || outcome.Acquired || outcome.Reason != "Conflict" {
			t.Fatalf("outcome %+v, %v; want Conflict", outcome, err)
		}
		if claim, _ := w.kube.CoreV1().PersistentVolumeClaims("storage").Get(context.Background(), w.replica.Name, metav1.GetOptions{}); replica.IsTaken(claim) {
			t.Error("a replica was taken for a checkout whose claim name is in use")
		}
	})
}

// TestVolumeIsNeverReleasedWithDeletePolicy plays the PV controller, which marks the volume Released as
// soon as the replica claim is gone, and checks that no version of the volume written during the
// handout is Released with a Delete policy: the provisioner would delete it under the new claim.
func TestVolumeIsNeverReleasedWithDeletePolicy(t *testing.T) {
	w := newWorld(t)
	w.kube.PrependReactor("delete", "persistentvolumeclaims", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetNamespace() != "storage" {
			return false, nil, nil
		}
		volume, err := w.kube.Tracker().Get(corev1.SchemeGroupVersion.WithResource("persistentvolumes"), "", "pv-1")
		if err != nil {
			return false, nil, nil
		}
		released := volume.(*corev1.PersistentVolume).DeepCopy()
		released.Status.Phase = corev1.VolumeReleased
		if err := w.kube.Tracker().Update(corev1.SchemeGroupVersion.WithResource("persistentvolumes"), released, ""); err != nil {
			t.Error(err)
		}
		return false, nil, nil
	})
	var versions []corev1.PersistentVolume
	w.kube.PrependReactor("update", "persistentvolumes", func(action k8stesting.Action) (bool, runtime.Object, error) {
		volume := action.(k8stesting.UpdateAction).GetObject().(*corev1.PersistentVolume)
		if action.GetSubresource() != "status" {
			// A spec update keeps the stored status.
			stored, err := w.kube.Tracker().Get(corev1.SchemeGroupVersion.WithResource("persistentvolumes"), "", volume.Name)
			if err == nil {
				volume = volume.DeepCopy()
				volume.Status = stored.(*corev1.PersistentVolume).Status
			}
		}
		versions = append(versions, *volume.DeepCopy())
		return false, nil, nil
	})
	outcome, err := w.handout.Acquire(context.Background(), w.checkout, false)
	if err != nil || !outcome.Acquired {
		t.Fatalf("outcome %+v, %v", outcome, err)
	}
	sawReleased := false
	for i, version := range versions {
		if version.Status.Phase == corev1.VolumeReleased {
			sawReleased = true
			if version.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete {
				t.Errorf("version %d of the volume is Released with reclaim policy Delete", i)
			}
		}
	}
	if !sawReleased {
		t.Fatal("the simulated PV controller never released the volume; the test checks nothing")
	}
	if final := w.getVolume(t); final.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || final.Status.Phase != corev1.VolumeBound {
		t.Errorf("final volume: policy %s phase %s, want Delete and Bound", final.Spec.PersistentVolumeReclaimPolicy, final.Status.Phase)
	}
}

// TestAcquireAgainWhileTheReplicaClaimLingers: pvc-protection keeps a released replica claim, still
// annotated for the checkout, until its finalizer goes. Another Acquire in that window (the checkout
// controller after the create request) must leave the handed-out claim and its volume alone.
func TestAcquireAgainWhileTheReplicaClaimLingers(t *testing.T) {
	w := newWorld(t)
	first, err := w.handout.Acquire(context.Background(), w.checkout, false)
	if err != nil || !first.Acquired {
		t.Fatalf("first Acquire: %+v, %v", first, err)
	}
	claim, err := w.kube.CoreV1().PersistentVolumeClaims("team").Get(context.Background(), "job", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lingering := w.replica.DeepCopy()
	lingering.Annotations[replica.AnnotationCheckout] = replica.CheckoutKey("team", "job", w.checkout.UID)
	lingering.Labels[replica.LabelCheckoutUID] = string(w.checkout.UID)
	lingering.Finalizers = []string{"kubernetes.io/pvc-protection"}
	lingering.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if err := w.kube.Tracker().Add(lingering); err != nil {
		t.Fatal(err)
	}

	again, err := w.handout.Acquire(context.Background(), first.Checkout, false)
	if err != nil || !again.Acquired {
		t.Fatalf("second Acquire: %+v, %v", again, err)
	}
	after, err := w.kube.CoreV1().PersistentVolumeClaims("team").Get(context.Background(), "job", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the checkout's claim is gone: %v", err)
	}
	if after.UID != claim.UID {
		t.Fatalf("the checkout's claim was replaced: UID %s, was %s", after.UID, claim.UID)
	}
	volume := w.getVolume(t)
	if volume.Spec.ClaimRef.UID != claim.UID || volume.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		t.Fatalf("volume bound to %+v with policy %s; want the checkout's claim and Delete", volume.Spec.ClaimRef, volume.Spec.PersistentVolumeReclaimPolicy)
	}
	if _, held := volume.Labels[replica.LabelCheckoutUID]; held {
		t.Fatal("the handed-out volume was labelled held again")
	}
}
