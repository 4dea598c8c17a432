package pool

import (
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/pvpool/pvpool/pkg/generated/clientset/versioned/fake"
	"github.com/pvpool/pvpool/pkg/generated/informers/externalversions"
)

// TestStaleCacheDoesNotCreateReplicasTwice runs reconciles on caches the test fills by hand, so that
// the cache lags behind the writes for as long as the test wants.
func TestStaleCacheDoesNotCreateReplicasTwice(t *testing.T) {
	pool := newPool("lagging", 3)
	class := storageClass("immediate", storagev1.VolumeBindingImmediate)
	kube := kubefake.NewClientset(class)
	pvpool := fake.NewClientset(pool)
	kubeInformers := informers.NewSharedInformerFactory(kube, 0)
	pvpoolInformers := externalversions.NewSharedInformerFactory(pvpool, 0)
	clock := testingclock.NewFakeClock(testStart)
	c, err := NewController(kube, pvpool, kubeInformers, pvpoolInformers, record.NewFakeRecorder(100), Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	pools := pvpoolInformers.Pvpool().V1alpha1().Pools().Informer().GetIndexer()
	claims := kubeInformers.Core().V1().PersistentVolumeClaims().Informer().GetIndexer()
	if err := pools.Add(pool); err != nil {
		t.Fatal(err)
	}
	if err := kubeInformers.Storage().V1().StorageClasses().Informer().GetIndexer().Add(class); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	served := func() int {
		list, err := kube.CoreV1().PersistentVolumeClaims(testNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return len(list.Items)
	}
	kube.PrependReactor("create", "persistentvolumeclaims", generateNames())

	if _, err := c.sync(ctx, testNamespace, pool.Name); err != nil {
		t.Fatal(err)
	}
	requeue, err := c.sync(ctx, testNamespace, pool.Name)
	if err != nil {
		t.Fatal(err)
	}
	if n := served(); n != 3 {
		t.Fatalf("%d claims after two reconciles on a cache that shows none, want 3", n)
	}
	if requeue <= 0 || requeue > inflightTTL {
		t.Errorf("requeue after %v while creations are unconfirmed, want within %v", requeue, inflightTTL)
	}

	// The cache catches up with one claim; the others are still trusted.
	list, _ := kube.CoreV1().PersistentVolumeClaims(testNamespace).List(ctx, metav1.ListOptions{})
	if err := claims.Add(&list.Items[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.sync(ctx, testNamespace, pool.Name); err != nil {
		t.Fatal(err)
	}
	if n := served(); n != 3 {
		t.Fatalf("%d claims once the cache shows one of them, want 3", n)
	}

	// Creations the cache never shows are given up after a while, and made again.
	clock.Step(inflightTTL + time.Second)
	if _, err := c.sync(ctx, testNamespace, pool.Name); err != nil {
		t.Fatal(err)
	}
	if n := served(); n != 5 {
		t.Fatalf("%d claims after the unconfirmed creations expired, want 5 (1 seen + 2 made again + 2 never seen)", n)
	}
}

// TestInflightCacheAheadOfCreateCall covers the informer showing a new claim before its create call
// returned: once the claim is gone again it must not be counted as still on its way.
func TestInflightCacheAheadOfCreateCall(t *testing.T) {
	clock := testingclock.NewFakeClock(testStart)
	f := newInflight(clock)
	f.observeCreated("ns/pool", "pool-fast", clock.Now())
	f.created("ns/pool", "pool-fast")
	f.created("ns/pool", "pool-slow")
	unseen, _, _ := f.pending("ns/pool", map[string]bool{}, nil)
	if unseen != 1 {
		t.Errorf("%d creations unseen, want 1 (only pool-slow)", unseen)
	}

	// An old claim showing up (initial list, resync) is not remembered.
	f.observeCreated("ns/other", "other-old", testStart.Add(-time.Hour))
	if _, ok := f.pools["ns/other"]; ok {
		t.Error("an old claim was recorded as freshly created")
	}
}
