package pool

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	kubefake "k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/generated/clientset/versioned/fake"
	"github.com/pvpool/pvpool/pkg/generated/informers/externalversions"
	"github.com/pvpool/pvpool/pkg/replica"
)

const testNamespace = "storage"

var everything = labels.Everything()

var testStart = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// fixture runs the controller against fake clientsets; tests call sync directly, after waiting for
// the informers to show what the fake API server holds.
type fixture struct {
	t        *testing.T
	ctx      context.Context
	cancel   context.CancelFunc
	kube     *kubefake.Clientset
	pvpool   *fake.Clientset
	recorder *record.FakeRecorder
	clock    *testingclock.FakeClock
	c        *Controller
}

func newFixture(t *testing.T, objects ...runtime.Object) *fixture {
	t.Helper()
	return newFixtureWithClock(t, testingclock.NewFakeClock(testStart), objects...)
}

// newFixtureWithClock gives the controller clock; the workqueue runs on it too, so tests that go
// through Run need a real one.
func newFixtureWithClock(t *testing.T, clock clock.WithTicker, objects ...runtime.Object) *fixture {
	t.Helper()
	var kubeObjects, pvpoolObjects []runtime.Object
	for _, obj := range objects {
		if _, ok := obj.(*v1alpha1.Pool); ok {
			pvpoolObjects = append(pvpoolObjects, obj)
		} else {
			kubeObjects = append(kubeObjects, obj)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := &fixture{
		t:        t,
		ctx:      ctx,
		cancel:   cancel,
		kube:     kubefake.NewClientset(kubeObjects...),
		pvpool:   fake.NewClientset(pvpoolObjects...),
		recorder: record.NewFakeRecorder(1000),
	}
	f.clock, _ = clock.(*testingclock.FakeClock)
	f.kube.PrependReactor("create", "*", generateNames())

	kubeInformers := informers.NewSharedInformerFactory(f.kube, 0)
	pvpoolInformers := externalversions.NewSharedInformerFactory(f.pvpool, 0)
	c, err := NewController(f.kube, f.pvpool, kubeInformers, pvpoolInformers, f.recorder, Options{
		FailureBackoff:    10 * time.Second,
		MaxFailureBackoff: 40 * time.Second,
		Clock:             clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.c = c
	kubeInformers.Start(ctx.Done())
	pvpoolInformers.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		kubeInformers.Shutdown()
		pvpoolInformers.Shutdown()
	})
	for typ, ok := range kubeInformers.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer for %v did not sync", typ)
		}
	}
	for typ, ok := range pvpoolInformers.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer for %v did not sync", typ)
		}
	}
	return f
}

// generateNames returns a reactor that does what the fake API server does not and the controller
// relies on: generate names, set UIDs and creation times (one second apart, in creation order).
func generateNames() clienttesting.ReactionFunc {
	var serial atomic.Int64
	return func(action clienttesting.Action) (bool, runtime.Object, error) {
		obj, ok := action.(clienttesting.CreateAction).GetObject().(metav1.Object)
		if !ok {
			return false, nil, nil
		}
		n := serial.Add(1)
		if obj.GetName() == "" && obj.GetGenerateName() != "" {
			obj.SetName(fmt.Sprintf("%s%05d", obj.GetGenerateName(), n))
		}
		if obj.GetUID() == "" {
			obj.SetUID(types.UID(fmt.Sprintf("uid-%s-%d", obj.GetName(), n)))
		}
		if ts := obj.GetCreationTimestamp(); ts.IsZero() {
			obj.SetCreationTimestamp(metav1.NewTime(testStart.Add(time.Duration(n) * time.Second)))
		}
		return false, nil, nil
	}
}

// settle waits until every lister shows exactly what the fake API server holds.
func (f *fixture) settle() {
	f.t.Helper()
	var diff string
	err := wait.PollUntilContextTimeout(f.ctx, 5*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		diff = f.cacheDiff(ctx)
		return diff == "", nil
	})
	if err != nil {
		f.t.Fatalf("informers did not catch up: %s", diff)
	}
}

func (f *fixture) cacheDiff(ctx context.Context) string {
	claims, _ := f.kube.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	cachedClaims, _ := f.c.claimLister.List(everything)
	if d := diffObjects(claims.Items, cachedClaims); d != "" {
		return "claims: " + d
	}
	jobs, _ := f.kube.BatchV1().Jobs("").List(ctx, metav1.ListOptions{})
	cachedJobs, _ := f.c.jobLister.List(everything)
	if d := diffObjects(jobs.Items, cachedJobs); d != "" {
		return "jobs: " + d
	}
	volumes, _ := f.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	cachedVolumes, _ := f.c.volumeLister.List(everything)
	if d := diffObjects(volumes.Items, cachedVolumes); d != "" {
		return "volumes: " + d
	}
	classes, _ := f.kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	cachedClasses, _ := f.c.classLister.List(everything)
	if d := diffObjects(classes.Items, cachedClasses); d != "" {
		return "classes: " + d
	}
	pools, _ := f.pvpool.PvpoolV1alpha1().Pools("").List(ctx, metav1.ListOptions{})
	cachedPools, _ := f.c.poolLister.List(everything)
	if d := diffObjects(pools.Items, cachedPools); d != "" {
		return "pools: " + d
	}
	return ""
}

func diffObjects[T any, P interface {
	*T
	metav1.Object
}](served []T, cached []P) string {
	if len(served) != len(cached) {
		return fmt.Sprintf("%d served, %d cached", len(served), len(cached))
	}
	byName := map[string]P{}
	for _, obj := range cached {
		byName[obj.GetNamespace()+"/"+obj.GetName()] = obj
	}
	for i := range served {
		obj := P(&served[i])
		if cachedObj, ok := byName[obj.GetNamespace()+"/"+obj.GetName()]; !ok || !apiequality.Semantic.DeepEqual(cachedObj, obj) {
			return "differs at " + obj.GetName()
		}
	}
	return ""
}

// sync runs one reconcile of the pool on an up-to-date cache.
func (f *fixture) sync(pool string) time.Duration {
	f.t.Helper()
	f.settle()
	requeue, err := f.c.sync(f.ctx, testNamespace, pool)
	if err != nil {
		f.t.Fatalf("sync %s: %v", pool, err)
	}
	return requeue
}

func (f *fixture) claims(pool *v1alpha1.Pool) []corev1.PersistentVolumeClaim {
	f.t.Helper()
	list, err := f.kube.CoreV1().PersistentVolumeClaims(testNamespace).List(f.ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var owned []corev1.PersistentVolumeClaim
	for _, claim := range list.Items {
		if pool == nil || replica.OwnedBy(pool, &claim) {
			owned = append(owned, claim)
		}
	}
	sort.Slice(owned, func(i, j int) bool { return owned[i].Name < owned[j].Name })
	return owned
}

func (f *fixture) jobs() []batchv1.Job {
	f.t.Helper()
	list, err := f.kube.BatchV1().Jobs(testNamespace).List(f.ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	return list.Items
}

func (f *fixture) pool(name string) *v1alpha1.Pool {
	f.t.Helper()
	pool, err := f.pvpool.PvpoolV1alpha1().Pools(testNamespace).Get(f.ctx, name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return pool
}

func (f *fixture) updatePool(pool *v1alpha1.Pool) {
	f.t.Helper()
	pool.Generation++
	if _, err := f.pvpool.PvpoolV1alpha1().Pools(testNamespace).Update(f.ctx, pool, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// bind does what the PV controller does when it binds claim to a new volume.
func (f *fixture) bind(claim corev1.PersistentVolumeClaim) corev1.PersistentVolumeClaim {
	f.t.Helper()
	volume := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + claim.Name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:    claim.Spec.Resources.Requests,
			AccessModes: claim.Spec.AccessModes,
			ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: claim.Namespace,
				Name: claim.Name, UID: claim.UID},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	if _, err := f.kube.CoreV1().PersistentVolumes().Create(f.ctx, volume, metav1.CreateOptions{}); err != nil {
		f.t.Fatal(err)
	}
	claim.Spec.VolumeName = volume.Name
	claim.Status.Phase = corev1.ClaimBound
	updated, err := f.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(f.ctx, &claim, metav1.UpdateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return *updated
}

func (f *fixture) updateClaim(claim *corev1.PersistentVolumeClaim) {
	f.t.Helper()
	if _, err := f.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(f.ctx, claim, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) finishJob(job batchv1.Job, conditionType batchv1.JobConditionType) {
	f.t.Helper()
	job.Status.Conditions = append(job.Status.Conditions, batchv1.JobCondition{
		Type: conditionType, Status: corev1.ConditionTrue, Reason: "Test", Message: "finished by the test"})
	if _, err := f.kube.BatchV1().Jobs(job.Namespace).UpdateStatus(f.ctx, &job, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// events drains the recorded events.
func (f *fixture) events() []string {
	var events []string
	for {
		select {
		case event := <-f.recorder.Events:
			events = append(events, event)
		default:
			return events
		}
	}
}

func hasEvent(events []string, prefix string) bool {
	for _, event := range events {
		if strings.HasPrefix(event, prefix) {
			return true
		}
	}
	return false
}

// deleteActions returns the delete actions on resource recorded since the last clear.
func (f *fixture) deleteActions(resource string) []clienttesting.DeleteAction {
	var deletes []clienttesting.DeleteAction
	for _, action := range f.kube.Actions() {
		if action.GetVerb() == "delete" && action.GetResource().Resource == resource {
			deletes = append(deletes, action.(clienttesting.DeleteAction))
		}
	}
	return deletes
}

func storageClass(name string, mode storagev1.VolumeBindingMode) *storagev1.StorageClass {
	return &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: name},
		Provisioner:       "pvpool.puppet.com/csi",
		VolumeBindingMode: &mode,
	}
}

type poolOption func(*v1alpha1.Pool)

func withInitJob(spec batchv1.JobSpec, volumeName string) poolOption {
	return func(p *v1alpha1.Pool) {
		p.Spec.InitJob = &v1alpha1.MountJob{Template: v1alpha1.JobTemplate{Spec: spec}, VolumeName: volumeName}
	}
}

func withClass(name string) poolOption {
	return func(p *v1alpha1.Pool) { p.Spec.Template.Spec.StorageClassName = ptr.To(name) }
}

func withLabels(labels map[string]string) poolOption {
	return func(p *v1alpha1.Pool) {
		p.Spec.Selector = &metav1.LabelSelector{MatchLabels: labels}
		p.Spec.Template.Labels = labels
	}
}

func newPool(name string, replicas int32, options ...poolOption) *v1alpha1.Pool {
	labels := map[string]string{"app.kubernetes.io/name": name}
	pool := &v1alpha1.Pool{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace, UID: types.UID("pool-uid-" + name), Generation: 1},
		Spec: v1alpha1.PoolSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1alpha1.PersistentVolumeClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"example.com/note": "from template"}},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: ptr.To("immediate"),
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("50Mi")},
					},
				},
			},
		},
	}
	for _, option := range options {
		option(pool)
	}
	return pool
}

func condition(pool *v1alpha1.Pool, conditionType v1alpha1.PoolConditionType) v1alpha1.PoolCondition {
	if c := findCondition(pool.Status.Conditions, conditionType); c != nil {
		return *c
	}
	return v1alpha1.PoolCondition{}
}
