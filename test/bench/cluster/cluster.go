package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
	"github.com/pvpool/pvpool/pkg/replica"
)

// labelBench marks everything the benchmark creates, so a leftover is recognisable.
const labelBench = "bench.pvpool.puppet.com/run"

// bench holds the clients and what must be removed at the end.
type bench struct {
	kube   kubernetes.Interface
	pvpool clientset.Interface
	cfg    config
	runID  string

	mu                sync.Mutex
	namespaces        []string
	storageClasses    []string
	deletedNamespaces map[string]bool
}

// createNamespace creates a namespace for one phase; cleanup removes it.
func (b *bench) createNamespace(ctx context.Context, prefix string) (string, error) {
	ns, err := b.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: prefix,
		Labels:       map[string]string{labelBench: b.runID},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("creating a namespace: %w", err)
	}
	b.mu.Lock()
	b.namespaces = append(b.namespaces, ns.Name)
	b.mu.Unlock()
	klog.V(2).InfoS("Created namespace", "namespace", ns.Name)
	return ns.Name, nil
}

// deleteNamespace deletes the checkouts and pools in ns (so their claims and volumes go the way a
// user's would), then ns, and waits until ns is gone so that the deletions do not load the machine
// during the next measurement.
func (b *bench) deleteNamespace(ctx context.Context, ns string) error {
	b.mu.Lock()
	if b.deletedNamespaces == nil {
		b.deletedNamespaces = map[string]bool{}
	}
	if b.deletedNamespaces[ns] {
		b.mu.Unlock()
		return nil
	}
	b.mu.Unlock()
	var errs []error
	if err := b.pvpool.PvpoolV1alpha1().Checkouts(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("deleting checkouts in %s: %w", ns, err))
	}
	if err := b.pvpool.PvpoolV1alpha1().Pools(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("deleting pools in %s: %w", ns, err))
	}
	if err := b.kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("deleting namespace %s: %w", ns, err))
		return errors.Join(errs...)
	}
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, b.cfg.deleteTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := b.kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("namespace %s still exists after %s: %w", ns, b.cfg.deleteTimeout, err))
	} else {
		b.mu.Lock()
		b.deletedNamespaces[ns] = true
		b.mu.Unlock()
	}
	return errors.Join(errs...)
}

// createUnprovisionedClass creates a StorageClass nothing provisions and that binds only for a pod, so
// claims of that class cost the API server a create and nothing else.
func (b *bench) createUnprovisionedClass(ctx context.Context) (string, error) {
	class, err := b.kube.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{GenerateName: "pvpool-bench-unprovisioned-", Labels: map[string]string{labelBench: b.runID}},
		Provisioner:       "kubernetes.io/no-provisioner",
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("creating a StorageClass: %w", err)
	}
	b.mu.Lock()
	b.storageClasses = append(b.storageClasses, class.Name)
	b.mu.Unlock()
	return class.Name, nil
}

// cleanup removes everything the run created; it is called on every exit path, with a context of
// its own so that an interrupted run still cleans up.
func (b *bench) cleanup() error {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.deleteTimeout+time.Minute)
	defer cancel()
	b.mu.Lock()
	namespaces := append([]string(nil), b.namespaces...)
	classes := append([]string(nil), b.storageClasses...)
	b.mu.Unlock()
	var errs []error
	for _, ns := range namespaces {
		if err := b.deleteNamespace(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, class := range classes {
		if err := b.kube.StorageV1().StorageClasses().Delete(ctx, class, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting StorageClass %s: %w", class, err))
		}
	}
	return errors.Join(errs...)
}

// claimSpec is the claim both a pool's template and a dynamically provisioned claim use, so the two
// are compared on the same volume.
func (b *bench) claimSpec(class string) corev1.PersistentVolumeClaimSpec {
	mode := corev1.PersistentVolumeMode(b.cfg.volumeMode)
	return corev1.PersistentVolumeClaimSpec{
		StorageClassName: ptr.To(class),
		AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		VolumeMode:       &mode,
		Resources: corev1.VolumeResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(b.cfg.size)},
		},
	}
}

// benchPod runs busybox with claim mounted (Filesystem) or attached (Block) until deleted.
func (b *bench) benchPod(name, claim string) *corev1.Pod {
	container := corev1.Container{
		Name:    "main",
		Image:   b.cfg.podImage,
		Command: []string{"/bin/sleep", "3600"},
	}
	if b.cfg.volumeMode == string(corev1.PersistentVolumeBlock) {
		container.VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/dev/xvda"}}
	} else {
		container.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/workspace"}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labelBench: b.runID}},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers:                    []corev1.Container{container},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
}

func (b *bench) pool(name string, replicas int32, initJob bool) *v1alpha1.Pool {
	labels := map[string]string{"bench.pvpool.puppet.com/pool": name}
	pool := &v1alpha1.Pool{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labelBench: b.runID}},
		Spec: v1alpha1.PoolSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1alpha1.PersistentVolumeClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       b.claimSpec(b.cfg.storageClass),
			},
		},
	}
	if initJob {
		container := corev1.Container{
			Name:    "init",
			Image:   b.cfg.podImage,
			Command: []string{"/bin/sh", "-c", "echo prepopulated >/workspace/data.txt"},
		}
		if b.cfg.volumeMode == string(corev1.PersistentVolumeBlock) {
			container.Command = []string{"/bin/sh", "-c", "echo prepopulated | dd of=/dev/xvda conv=fsync"}
			container.VolumeDevices = []corev1.VolumeDevice{{Name: "workspace", DevicePath: "/dev/xvda"}}
		} else {
			container.VolumeMounts = []corev1.VolumeMount{{Name: "workspace", MountPath: "/workspace"}}
		}
		pool.Spec.InitJob = &v1alpha1.MountJob{Template: v1alpha1.JobTemplate{Spec: batchJobSpec(container)}}
	}
	return pool
}

// availableReplicas counts the claims of pool that may be handed out now, read from the claims
// themselves: the pool's status is written after the fact and would add the controller's status
// update delay to a refill time.
func availableReplicas(pool *v1alpha1.Pool, claims []*corev1.PersistentVolumeClaim) int {
	available := 0
	for _, claim := range claims {
		if replica.OwnedBy(pool, claim) && replica.IsAvailable(claim) {
			available++
		}
	}
	return available
}

// claimWatch is an informer on the claims of one namespace.
type claimWatch struct {
	factory informers.SharedInformerFactory
	cancel  context.CancelFunc
	lister  func() ([]*corev1.PersistentVolumeClaim, error)
	changed chan struct{}
}

// stop ends the informer and waits for its goroutines.
func (w *claimWatch) stop() {
	w.cancel()
	w.factory.Shutdown()
}

// watchClaims starts an informer on the claims in ns; changed receives (without blocking) after
// every change.
func (b *bench) watchClaims(ctx context.Context, ns string) (*claimWatch, error) {
	factory := informers.NewSharedInformerFactoryWithOptions(b.kube, 0, informers.WithNamespace(ns))
	informer := factory.Core().V1().PersistentVolumeClaims()
	ctx, cancel := context.WithCancel(ctx)
	watch := &claimWatch{factory: factory, cancel: cancel, changed: make(chan struct{}, 1)}
	notify := func() {
		select {
		case watch.changed <- struct{}{}:
		default:
		}
	}
	if _, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(interface{}) { notify() },
		UpdateFunc: func(interface{}, interface{}) { notify() },
		DeleteFunc: func(interface{}) { notify() },
	}); err != nil {
		cancel()
		return nil, err
	}
	lister := informer.Lister().PersistentVolumeClaims(ns)
	watch.lister = func() ([]*corev1.PersistentVolumeClaim, error) { return lister.List(labels.Everything()) }
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			watch.stop()
			return nil, fmt.Errorf("informer for %v in %s did not sync", typ, ns)
		}
	}
	return watch, nil
}

// waitAvailable waits until pool has want replicas available, judged from the claims, and returns
// when that was first seen.
func (w *claimWatch) waitAvailable(ctx context.Context, pool *v1alpha1.Pool, want int, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		claims, err := w.lister()
		if err != nil {
			return time.Time{}, err
		}
		if got := availableReplicas(pool, claims); got >= want {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			claims, _ := w.lister()
			return time.Time{}, fmt.Errorf("pool %s/%s: %d of %d replicas available after %s: %w",
				pool.Namespace, pool.Name, availableReplicas(pool, claims), want, timeout, ctx.Err())
		case <-w.changed:
		}
	}
}

// createPoolAndWait creates pool in ns and waits for all its replicas to be available; it returns
// the pool and how long filling it took.
func (b *bench) createPoolAndWait(ctx context.Context, ns string, pool *v1alpha1.Pool, claims *claimWatch) (*v1alpha1.Pool, time.Duration, error) {
	start := time.Now()
	created, err := b.pvpool.PvpoolV1alpha1().Pools(ns).Create(ctx, pool, metav1.CreateOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("creating pool %s/%s: %w", ns, pool.Name, err)
	}
	replicas := int(*pool.Spec.Replicas)
	klog.InfoS("Waiting for the pool to fill", "pool", klog.KObj(created), "replicas", replicas)
	at, err := claims.waitAvailable(ctx, created, replicas, b.cfg.fillTimeout(replicas))
	if err != nil {
		return nil, 0, err
	}
	return created, at.Sub(start), nil
}

// waitForAPI waits until the aggregated API answers, so that a cluster just brought up (or an
// apiserver being rolled) does not fail the first request.
func (b *bench) waitForAPI(ctx context.Context) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, last = b.pvpool.PvpoolV1alpha1().Pools(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{Limit: 1})
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("the pvpool API does not answer: %v (%w)", last, err)
	}
	return nil
}

// batchJobSpec is an init job that runs container once and gives up quickly: a failing init job
// should fail the benchmark, not stall it.
func batchJobSpec(container corev1.Container) batchv1.JobSpec {
	return batchv1.JobSpec{
		BackoffLimit:          ptr.To[int32](2),
		ActiveDeadlineSeconds: ptr.To[int64](120),
		Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers:                    []corev1.Container{container},
		}},
	}
}
