package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
	"github.com/pvpool/pvpool/pkg/replica"
)

// newFakeKube is a fake kube-apiserver that, like the real one, gives new objects a UID, a creation
// time and a generated name.
func newFakeKube() *fake.Clientset {
	kube := fake.NewClientset()
	kube.PrependReactor("create", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		obj := action.(k8stesting.CreateAction).GetObject()
		if accessor, err := meta.Accessor(obj); err == nil {
			if accessor.GetUID() == "" {
				accessor.SetUID(uuid.NewUUID())
			}
			if created := accessor.GetCreationTimestamp(); created.IsZero() {
				accessor.SetCreationTimestamp(metav1.Now())
			}
			if accessor.GetName() == "" && accessor.GetGenerateName() != "" {
				accessor.SetName(accessor.GetGenerateName() + utilrand.String(5))
			}
		}
		return false, nil, nil
	})
	return kube
}

// runProvisioner plays the external provisioner and PV controller for replica claims: every pending
// claim without a volume gets a new CSI volume bound to it.
func runProvisioner(ctx context.Context, t *testing.T, kube *fake.Clientset) {
	watcher, err := kube.CoreV1().PersistentVolumeClaims("").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer watcher.Stop()
		for event := range watcher.ResultChan() {
			claim, ok := event.Object.(*corev1.PersistentVolumeClaim)
			if !ok || event.Type == watch.Deleted || claim.Spec.VolumeName != "" {
				continue
			}
			volume := &corev1.PersistentVolume{
				ObjectMeta: metav1.ObjectMeta{Name: "pvc-" + string(claim.UID)},
				Spec: corev1.PersistentVolumeSpec{
					Capacity:                      corev1.ResourceList{corev1.ResourceStorage: claim.Spec.Resources.Requests[corev1.ResourceStorage]},
					AccessModes:                   claim.Spec.AccessModes,
					PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
					StorageClassName:              "fast",
					VolumeMode:                    claim.Spec.VolumeMode,
					ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID},
					PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
						Driver: "subprovisioner.gitlab.io", VolumeHandle: string(claim.UID)}},
				},
				Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
			}
			if _, err := kube.CoreV1().PersistentVolumes().Create(ctx, volume, metav1.CreateOptions{}); err != nil {
				continue
			}
			claim = claim.DeepCopy()
			claim.Spec.VolumeName = volume.Name
			claim.Status.Phase = corev1.ClaimBound
			claim.Status.Capacity = volume.Spec.Capacity
			// The pool controller may delete a replica before it is bound (scale-down picks unbound ones
			// first); a provisioner then has nothing to bind.
			if _, err := kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(ctx, claim, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) {
				t.Errorf("binding replica %s: %v", claim.Name, err)
			}
		}
	}()
}

type warnings struct {
	sync.Mutex
	messages []string
}

func (w *warnings) HandleWarningHeader(code int, agent, message string) {
	w.Lock()
	defer w.Unlock()
	w.messages = append(w.messages, message)
}

func (w *warnings) saw(substring string) bool {
	w.Lock()
	defer w.Unlock()
	for _, m := range w.messages {
		if strings.Contains(m, substring) {
			return true
		}
	}
	return false
}

func clientWithWarnings(t *testing.T, s *testServer, user string) (clientset.Interface, *warnings) {
	config := rest.CopyConfig(s.config)
	config.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	seen := &warnings{}
	config.WarningHandler = seen
	client, err := clientset.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	return client, seen
}

func acquiredReason(checkout *v1alpha1.Checkout) string {
	for _, c := range checkout.Status.Conditions {
		if c.Type == v1alpha1.CheckoutAcquired {
			return c.Reason
		}
	}
	return ""
}

func waitFor(t *testing.T, what string, condition func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, time.Minute, true, condition); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func TestCheckout(t *testing.T) {
	kube := newFakeKube()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runProvisioner(ctx, t, kube)
	s := startServerWithKube(t, usePermissions{
		"alice": {"default/pool-a", "default/pool-c", "default/pool-d", "default/pool-x", "storage/shared"},
	}, kube)
	alice, aliceWarnings := clientWithWarnings(t, s, "alice")
	bob, _ := clientWithWarnings(t, s, "bob")
	admin := s.client.PvpoolV1alpha1()

	createPool := func(namespace, name string, replicas int32) {
		t.Helper()
		pool := newPool(name, nil)
		pool.Spec.Replicas = &replicas
		if _, err := admin.Pools(namespace).Create(ctx, pool, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitAvailable := func(namespace, name string, available int32) {
		t.Helper()
		waitFor(t, fmt.Sprintf("pool %s/%s to have %d available replicas", namespace, name, available), func(ctx context.Context) (bool, error) {
			pool, err := admin.Pools(namespace).Get(ctx, name, metav1.GetOptions{})
			return err == nil && pool.Status.AvailableReplicas == available, nil
		})
	}
	waitAcquired := func(namespace, name string) *v1alpha1.Checkout {
		t.Helper()
		var checkout *v1alpha1.Checkout
		waitFor(t, "checkout "+name+" to acquire a volume", func(ctx context.Context) (bool, error) {
			var err error
			checkout, err = admin.Checkouts(namespace).Get(ctx, name, metav1.GetOptions{})
			return err == nil && acquiredReason(checkout) == "CheckedOut", nil
		})
		return checkout
	}

	createPool("default", "pool-a", 2)
	createPool("default", "pool-b", 1)
	waitAvailable("default", "pool-a", 2)

	t.Run("checkout returns a bound claim in the create response", func(t *testing.T) {
		checkout, err := alice.PvpoolV1alpha1().Checkouts("default").Create(ctx, newCheckout("c1", "", "pool-a"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if acquiredReason(checkout) != "CheckedOut" || checkout.Status.VolumeName == "" || checkout.Status.VolumeClaimRef.Name != "c1" {
			t.Fatalf("create returned status %+v, want CheckedOut with a volume and claim c1", checkout.Status)
		}
		claim, err := kube.CoreV1().PersistentVolumeClaims("default").Get(ctx, "c1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if claim.Status.Phase != corev1.ClaimBound || claim.Spec.VolumeName != checkout.Status.VolumeName || !metav1.IsControlledBy(claim, checkout) {
			t.Errorf("claim c1: phase %s, volume %s, owners %v", claim.Status.Phase, claim.Spec.VolumeName, claim.OwnerReferences)
		}
		volume, err := kube.CoreV1().PersistentVolumes().Get(ctx, checkout.Status.VolumeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if volume.Spec.ClaimRef.Name != "c1" || volume.Spec.ClaimRef.UID != claim.UID || volume.Status.Phase != corev1.VolumeBound {
			t.Errorf("volume bound to %+v, phase %s", volume.Spec.ClaimRef, volume.Status.Phase)
		}
		if volume.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			t.Errorf("volume reclaim policy %s, want the original Delete", volume.Spec.PersistentVolumeReclaimPolicy)
		}
		if _, held := volume.Labels[replica.LabelCheckoutUID]; held {
			t.Error("volume still labelled as held after the handout finished")
		}
	})

	t.Run("use is required on the pool", func(t *testing.T) {
		_, err := bob.PvpoolV1alpha1().Checkouts("default").Create(ctx, newCheckout("bobs", "", "pool-a"), metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "pool-a") {
			t.Fatalf("bob without use: got %v, want 403 naming pool-a", err)
		}
		if _, err := admin.Checkouts("default").Get(ctx, "bobs", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("a forbidden checkout was stored: %v", err)
		}
		_, err = alice.PvpoolV1alpha1().Checkouts("default").Create(ctx, newCheckout("other-pool", "", "pool-b"), metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "pool-b") {
			t.Errorf("alice on a pool she may not use: got %v, want 403 naming pool-b", err)
		}
		// Moving a checkout to a pool needs use on that pool too.
		moving, err := alice.PvpoolV1alpha1().Checkouts("default").Create(ctx, newCheckout("moving", "", "pool-x"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		moving.Spec.PoolRef.Name = "pool-b"
		if _, err := alice.PvpoolV1alpha1().Checkouts("default").Update(ctx, moving, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("re-pointing a checkout at pool-b: got %v, want 403", err)
		}
	})

	t.Run("ReadOnlyMany claim and volume", func(t *testing.T) {
		rox := newCheckout("rox", "", "pool-a")
		rox.Spec.ClaimName = "shared-data"
		rox.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}
		checkout, err := alice.PvpoolV1alpha1().Checkouts("default").Create(ctx, rox, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if checkout.Status.VolumeClaimRef.Name != "shared-data" {
			t.Fatalf("claim %q, want shared-data; status %+v", checkout.Status.VolumeClaimRef.Name, checkout.Status)
		}
		claim, err := kube.CoreV1().PersistentVolumeClaims("default").Get(ctx, "shared-data", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(claim.Spec.AccessModes) != "[ReadOnlyMany]" || fmt.Sprint(claim.Status.AccessModes) != "[ReadOnlyMany]" {
			t.Errorf("claim access modes spec %v status %v", claim.Spec.AccessModes, claim.Status.AccessModes)
		}
		volume, err := kube.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(volume.Spec.AccessModes) != "[ReadOnlyMany]" {
			t.Errorf("volume access modes %v, want [ReadOnlyMany] so the CSI driver publishes it read-only", volume.Spec.AccessModes)
		}
	})

	t.Run("waiting checkouts are fulfilled in creation order", func(t *testing.T) {
		createPool("default", "pool-c", 0)
		checkouts := alice.PvpoolV1alpha1().Checkouts("default")
		for _, name := range []string{"first", "second"} {
			checkout, err := checkouts.Create(ctx, newCheckout(name, "", "pool-c"), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if acquiredReason(checkout) != "NotAvailable" || checkout.Status.VolumeName != "" {
				t.Fatalf("%s: status %+v, want waiting with NotAvailable", name, checkout.Status)
			}
			time.Sleep(1100 * time.Millisecond) // creation timestamps have one-second resolution
		}
		if !aliceWarnings.saw("default/first is waiting") {
			t.Errorf("no warning for the waiting checkout; saw %v", aliceWarnings.messages)
		}
		pool, err := admin.Pools("default").Get(ctx, "pool-c", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pool.Spec.Replicas = ptr(int32(1))
		if _, err := admin.Pools("default").Update(ctx, pool, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		first := waitAcquired("default", "first")
		second, err := admin.Checkouts("default").Get(ctx, "second", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if acquiredReason(second) == "CheckedOut" && second.Status.Conditions[0].LastTransitionTime.Before(&first.Status.Conditions[0].LastTransitionTime) {
			t.Error("second was served before first")
		}
		// The pool refills and serves the second one.
		second = waitAcquired("default", "second")
		if second.Status.VolumeName == first.Status.VolumeName {
			t.Errorf("both checkouts hold volume %s", first.Status.VolumeName)
		}
	})

	t.Run("checkout before its pool exists", func(t *testing.T) {
		checkout, err := alice.PvpoolV1alpha1().Checkouts("default").Create(ctx, newCheckout("early", "", "pool-d"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if acquiredReason(checkout) != "PoolDoesNotExist" {
			t.Fatalf("reason %q, want PoolDoesNotExist", acquiredReason(checkout))
		}
		createPool("default", "pool-d", 1)
		waitAcquired("default", "early")
	})

	t.Run("claim name in use is a conflict until it is freed", func(t *testing.T) {
		foreign := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "taken", Namespace: "default"},
			Spec: corev1.PersistentVolumeClaimSpec{
				VolumeName: "someone-elses",
				Resources:  corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		}
		if _, err := kube.CoreV1().PersistentVolumeClaims("default").Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		conflicting := newCheckout("conflicting", "", "pool-a")
		conflicting.Spec.ClaimName = "taken"
		checkout, err := alice.PvpoolV1alpha1().Checkouts("default").Create(ctx, conflicting, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if acquiredReason(checkout) != "Conflict" {
			t.Fatalf("reason %q, want Conflict", acquiredReason(checkout))
		}
		if err := kube.CoreV1().PersistentVolumeClaims("default").Delete(ctx, "taken", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitAcquired("default", "conflicting")
	})

	t.Run("a deleted claim is replaced with a new volume", func(t *testing.T) {
		waitAvailable("default", "pool-a", 2)
		before, err := admin.Checkouts("default").Get(ctx, "c1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := kube.CoreV1().PersistentVolumeClaims("default").Delete(ctx, "c1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "c1 to hold a new volume", func(ctx context.Context) (bool, error) {
			after, err := admin.Checkouts("default").Get(ctx, "c1", metav1.GetOptions{})
			return err == nil && acquiredReason(after) == "CheckedOut" && after.Status.VolumeName != before.Status.VolumeName, nil
		})
	})

	t.Run("100 concurrent checkouts against a pool of 20", func(t *testing.T) {
		createPool("default", "big", 20)
		waitAvailable("default", "big", 20)
		var wg sync.WaitGroup
		acquiredAtOnce := make(chan string, 100)
		errs := make(chan error, 100)
		for i := 0; i < 100; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				checkout, err := s.client.PvpoolV1alpha1().Checkouts("load").Create(ctx, newCheckout(fmt.Sprintf("load-%03d", i), "default", "big"), metav1.CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
				if acquiredReason(checkout) == "CheckedOut" {
					acquiredAtOnce <- checkout.Status.VolumeName
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		close(acquiredAtOnce)
		for err := range errs {
			t.Fatal(err)
		}
		if n := len(acquiredAtOnce); n == 0 {
			t.Error("no checkout was served in its create request")
		}
		waitFor(t, "all 100 checkouts to be served as the pool refills", func(ctx context.Context) (bool, error) {
			list, err := admin.Checkouts("load").List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			served := 0
			for _, checkout := range list.Items {
				if acquiredReason(&checkout) == "CheckedOut" {
					served++
				}
			}
			return served == 100, nil
		})
	})

	t.Run("no volume is held by two checkouts", func(t *testing.T) {
		list, err := admin.Checkouts("").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		holders := map[string]string{}
		for _, checkout := range list.Items {
			if volume := checkout.Status.VolumeName; volume != "" {
				if other, seen := holders[volume]; seen {
					t.Errorf("volume %s held by %s and %s", volume, other, checkout.Name)
				}
				holders[volume] = checkout.Name
			}
		}
	})
}
