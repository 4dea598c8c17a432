package checkout

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/wait"
	kubeinformers "k8s.io/client-go/informers"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	pvpoolfake "github.com/pvpool/pvpool/pkg/generated/clientset/versioned/fake"
	pvpoolinformers "github.com/pvpool/pvpool/pkg/generated/informers/externalversions"
	"github.com/pvpool/pvpool/pkg/handout"
	"github.com/pvpool/pvpool/pkg/replica"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const poolUID = types.UID("pool-uid")

func testPool() *v1alpha1.Pool {
	return &v1alpha1.Pool{
		ObjectMeta: metav1.ObjectMeta{Name: "pool", Namespace: "storage", UID: poolUID},
		Spec:       v1alpha1.PoolSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "pool"}}},
	}
}

// availableReplica is a replica claim of testPool ready to hand out, and the volume bound to it.
func availableReplica(n int) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	isController := true
	name, volumeName := fmt.Sprintf("pool-%d", n), fmt.Sprintf("pv-%d", n)
	claimUID := types.UID(fmt.Sprintf("replica-uid-%d", n))
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "storage", UID: claimUID,
			CreationTimestamp: metav1.NewTime(epoch.Add(time.Duration(n) * time.Second)),
			Labels:            map[string]string{"pool": "pool"},
			Annotations:       map[string]string{replica.AnnotationAvailable: "true"},
			OwnerReferences:   []metav1.OwnerReference{{APIVersion: "pvpool.puppet.com/v1alpha1", Kind: "Pool", Name: "pool", UID: poolUID, Controller: &isController}},
		},
		Spec:   corev1.PersistentVolumeClaimSpec{VolumeName: volumeName, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
	volume := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: volumeName, UID: types.UID(volumeName + "-uid")},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "storage", Name: name, UID: claimUID},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "subprovisioner.gitlab.io", VolumeHandle: volumeName}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	return claim, volume
}

// waitingCheckout is a checkout of testPool created n seconds after the epoch whose create request
// found no replica and recorded that it waits.
func waitingCheckout(name string, n int) *v1alpha1.Checkout {
	return &v1alpha1.Checkout{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team", UID: types.UID(name + "-uid"),
			CreationTimestamp: metav1.NewTime(epoch.Add(time.Duration(n) * time.Second))},
		Spec: v1alpha1.CheckoutSpec{
			PoolRef:     v1alpha1.PoolReference{Namespace: "storage", Name: "pool"},
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		},
		Status: v1alpha1.CheckoutStatus{Conditions: []v1alpha1.CheckoutCondition{{
			Type: v1alpha1.CheckoutAcquired, Status: corev1.ConditionFalse, Reason: "NotAvailable",
		}}},
	}
}

type fixture struct {
	kube   *kubefake.Clientset
	pvpool *pvpoolfake.Clientset
}

// start runs the controller over clientsets holding objects until the test ends.
func start(t *testing.T, kubeObjects []runtime.Object, pvpoolObjects []runtime.Object) *fixture {
	t.Helper()
	kube := kubefake.NewClientset(kubeObjects...)
	kube.PrependReactor("create", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if accessor, err := meta.Accessor(action.(k8stesting.CreateAction).GetObject()); err == nil && accessor.GetUID() == "" {
			accessor.SetUID(uuid.NewUUID())
		}
		return false, nil, nil
	})
	pvpool := pvpoolfake.NewClientset(pvpoolObjects...)
	kubeFactory := kubeinformers.NewSharedInformerFactory(kube, 0)
	pvpoolFactory := pvpoolinformers.NewSharedInformerFactory(pvpool, 0)
	checkouts := pvpoolFactory.Pvpool().V1alpha1().Checkouts()
	if err := AddIndexers(checkouts); err != nil {
		t.Fatal(err)
	}
	controller, err := NewController(handout.New(kube, pvpool, nil), checkouts, pvpoolFactory.Pvpool().V1alpha1().Pools(),
		kubeFactory.Core().V1().PersistentVolumeClaims())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	kubeFactory.Start(ctx.Done())
	pvpoolFactory.Start(ctx.Done())
	go func() {
		defer close(done)
		controller.Run(ctx, 1)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		kubeFactory.Shutdown()
		pvpoolFactory.Shutdown()
	})
	return &fixture{kube: kube, pvpool: pvpool}
}

// waitFor polls the stored checkouts until condition holds for them.
func (f *fixture) waitFor(t *testing.T, what string, condition func(map[string]*v1alpha1.Checkout) bool) map[string]*v1alpha1.Checkout {
	t.Helper()
	var last map[string]*v1alpha1.Checkout
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := f.pvpool.PvpoolV1alpha1().Checkouts("team").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		last = map[string]*v1alpha1.Checkout{}
		for i := range list.Items {
			last[list.Items[i].Name] = &list.Items[i]
		}
		return condition(last), nil
	})
	if err != nil {
		for name, checkout := range last {
			t.Logf("checkout %s: %+v", name, checkout.Status)
		}
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return last
}

func acquired(checkouts map[string]*v1alpha1.Checkout, names ...string) bool {
	for _, name := range names {
		if checkout, ok := checkouts[name]; !ok || !handout.IsAcquired(checkout) {
			return false
		}
	}
	return true
}

func TestWaitingCheckoutsAreServedOldestFirst(t *testing.T) {
	claim1, volume1 := availableReplica(1)
	claim2, volume2 := availableReplica(2)
	// Created out of order, so the order served cannot come from the order the cache lists them in.
	f := start(t, []runtime.Object{claim1, volume1, claim2, volume2},
		[]runtime.Object{testPool(), waitingCheckout("third", 3), waitingCheckout("first", 1), waitingCheckout("second", 2)})

	checkouts := f.waitFor(t, "the two oldest checkouts to acquire the two replicas", func(c map[string]*v1alpha1.Checkout) bool {
		return acquired(c, "first", "second")
	})
	if handout.IsAcquired(checkouts["third"]) {
		t.Fatalf("the newest checkout was served while only two replicas exist: %+v", checkouts["third"].Status)
	}
	if got := checkouts["first"].Status.VolumeName + "," + checkouts["second"].Status.VolumeName; got != "pv-1,pv-2" && got != "pv-2,pv-1" {
		t.Fatalf("volumes handed out: %s", got)
	}

	// A replica becoming available wakes the pool's queue and serves the one left waiting.
	claim3, volume3 := availableReplica(3)
	if _, err := f.kube.CoreV1().PersistentVolumes().Create(context.Background(), volume3, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.kube.CoreV1().PersistentVolumeClaims("storage").Create(context.Background(), claim3, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkouts = f.waitFor(t, "the third checkout to acquire the new replica", func(c map[string]*v1alpha1.Checkout) bool {
		return acquired(c, "third")
	})
	if checkouts["third"].Status.VolumeName != "pv-3" {
		t.Fatalf("third checkout got %s, want pv-3", checkouts["third"].Status.VolumeName)
	}
	claim, err := f.kube.CoreV1().PersistentVolumeClaims("team").Get(context.Background(), "third", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if claim.Spec.VolumeName != "pv-3" || !metav1.IsControlledBy(claim, checkouts["third"]) {
		t.Fatalf("claim of the third checkout: volume %q owners %v", claim.Spec.VolumeName, claim.OwnerReferences)
	}
}

func TestCheckoutWhoseClaimWasDeletedGetsANewVolume(t *testing.T) {
	claim1, volume1 := availableReplica(1)
	f := start(t, []runtime.Object{claim1, volume1}, []runtime.Object{testPool(), waitingCheckout("job", 1)})
	checkouts := f.waitFor(t, "the checkout to acquire", func(c map[string]*v1alpha1.Checkout) bool { return acquired(c, "job") })
	if checkouts["job"].Status.VolumeName != "pv-1" {
		t.Fatalf("got %s, want pv-1", checkouts["job"].Status.VolumeName)
	}

	claim2, volume2 := availableReplica(2)
	if _, err := f.kube.CoreV1().PersistentVolumes().Create(context.Background(), volume2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.kube.CoreV1().PersistentVolumeClaims("storage").Create(context.Background(), claim2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.kube.CoreV1().PersistentVolumeClaims("team").Delete(context.Background(), "job", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "the checkout to hold the second volume", func(c map[string]*v1alpha1.Checkout) bool {
		return acquired(c, "job") && c["job"].Status.VolumeName == "pv-2"
	})
	claim, err := f.kube.CoreV1().PersistentVolumeClaims("team").Get(context.Background(), "job", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if claim.Spec.VolumeName != "pv-2" {
		t.Fatalf("the recreated claim points at %q, want pv-2", claim.Spec.VolumeName)
	}
}

func TestWaitingAheadCountsOnlyOlderRecordedWaiters(t *testing.T) {
	informer := pvpoolinformers.NewSharedInformerFactory(pvpoolfake.NewClientset(), 0).Pvpool().V1alpha1().Checkouts()
	if err := AddIndexers(informer); err != nil {
		t.Fatal(err)
	}
	indexer := informer.Informer().GetIndexer()

	handingOut := waitingCheckout("handing-out", 1)
	handingOut.Status = v1alpha1.CheckoutStatus{}
	deleted := waitingCheckout("deleted", 1)
	deleted.DeletionTimestamp = &metav1.Time{Time: epoch}
	otherPool := waitingCheckout("other-pool", 1)
	otherPool.Spec.PoolRef.Name = "other"
	newer := waitingCheckout("newer", 5)
	for _, checkout := range []*v1alpha1.Checkout{handingOut, deleted, otherPool, newer} {
		if err := indexer.Add(checkout); err != nil {
			t.Fatal(err)
		}
	}
	me := waitingCheckout("me", 3)
	me.Status = v1alpha1.CheckoutStatus{}
	if WaitingAhead(indexer, me) {
		t.Fatal("counted a checkout still handing out, a deleted one, one of another pool or a newer one as waiting ahead")
	}
	if err := indexer.Add(waitingCheckout("older", 2)); err != nil {
		t.Fatal(err)
	}
	if !WaitingAhead(indexer, me) {
		t.Fatal("an older waiting checkout of the same pool was not counted")
	}
}

// TestClaimMarkedLostByAStaleCacheIsBoundAgain plays kube-controller-manager marking a handed-out claim
// Lost because its cache still had the volume bound to the replica claim (event ClaimMisbound).
func TestClaimMarkedLostByAStaleCacheIsBoundAgain(t *testing.T) {
	claim1, volume1 := availableReplica(1)
	f := start(t, []runtime.Object{claim1, volume1}, []runtime.Object{testPool(), waitingCheckout("job", 1)})
	f.waitFor(t, "the checkout to acquire", func(c map[string]*v1alpha1.Checkout) bool { return acquired(c, "job") })

	claims := f.kube.CoreV1().PersistentVolumeClaims("team")
	claim, err := claims.Get(context.Background(), "job", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if claim.Status.Phase != corev1.ClaimBound {
		t.Fatalf("claim is %s after the handout", claim.Status.Phase)
	}
	claim.Status.Phase = corev1.ClaimLost
	if _, err := claims.UpdateStatus(context.Background(), claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		claim, err = claims.Get(ctx, "job", metav1.GetOptions{})
		return err == nil && claim.Status.Phase == corev1.ClaimBound, nil
	})
	if err != nil {
		t.Fatalf("claim still %s: %v", claim.Status.Phase, err)
	}
	volume, err := f.kube.CoreV1().PersistentVolumes().Get(context.Background(), "pv-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if volume.Spec.ClaimRef.UID != claim.UID || claim.Spec.VolumeName != "pv-1" {
		t.Fatalf("volume bound to %+v, claim names %q", volume.Spec.ClaimRef, claim.Spec.VolumeName)
	}
}
