package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/handout"
)

// LatencyReport is item 1: from the create call to the claim Bound and to a pod using it Running,
// for a checkout and for dynamic provisioning of the same claim through the same CSI driver,
// measured alternately in one run.
type LatencyReport struct {
	StorageClass string `json:"storageClass"`
	VolumeMode   string `json:"volumeMode"`
	Size         string `json:"size"`
	PoolReplicas int    `json:"poolReplicas"`
	// Checkout and Dynamic hold the distributions, and the raw samples in milliseconds in the order
	// they were taken.
	Checkout KindLatency `json:"checkout"`
	Dynamic  KindLatency `json:"dynamic"`
	// The ratios are dynamic / checkout per percentile: how many times longer dynamic provisioning
	// takes.
	APICreateRatio Ratios `json:"apiCreateRatio"`
	BoundRatio     Ratios `json:"boundRatio"`
	RunningRatio   Ratios `json:"runningRatio"`
	// CheckoutsWaited counts checkouts that found no replica available in the create request (the
	// pool had not refilled yet); their latency includes the wait.
	CheckoutsWaited int `json:"checkoutsWaited"`
}

// KindLatency is the latency of one way of getting a claim.
type KindLatency struct {
	APICreate Summary   `json:"apiCreate"`
	Bound     Summary   `json:"bound"`
	Running   Summary   `json:"running"`
	Samples   RawSample `json:"samples"`
}

// RawSample holds every sample in milliseconds, so figures can be recomputed or replotted.
type RawSample struct {
	APICreateMs []float64 `json:"apiCreateMs"`
	BoundMs     []float64 `json:"boundMs"`
	RunningMs   []float64 `json:"runningMs"`
}

type claimKind string

const (
	kindCheckout claimKind = "checkout"
	kindDynamic  claimKind = "dynamic"
)

// milestone is a moment an object reached, once.
type milestone struct {
	at   time.Time
	done chan struct{}
}

// milestones records, per object name, the first time an informer saw it reach a state.
type milestones struct {
	mu sync.Mutex
	m  map[string]*milestone
}

func newMilestones() *milestones { return &milestones{m: map[string]*milestone{}} }

func (ms *milestones) get(name string) *milestone {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m, ok := ms.m[name]
	if !ok {
		m = &milestone{done: make(chan struct{})}
		ms.m[name] = m
	}
	return m
}

func (ms *milestones) reach(name string, at time.Time) {
	m := ms.get(name)
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if m.at.IsZero() {
		m.at = at
		close(m.done)
	}
}

func (ms *milestones) wait(ctx context.Context, name string, timeout time.Duration) (time.Time, error) {
	m := ms.get(name)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-m.done:
		ms.mu.Lock()
		defer ms.mu.Unlock()
		return m.at, nil
	case <-timer.C:
		return time.Time{}, fmt.Errorf("not within %s", timeout)
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

// latencyRun measures single claims one at a time in one namespace.
type latencyRun struct {
	*bench
	ns       string
	pool     string
	bound    *milestones // claim Bound
	running  *milestones // pod Running
	podGone  *milestones
	claimGon *milestones
}

// watch starts informers that record when claims become Bound, pods Running, and either is gone.
func (l *latencyRun) watch(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(l.kube, 0, informers.WithNamespace(l.ns))
	onClaim := func(obj interface{}) {
		if claim, ok := obj.(*corev1.PersistentVolumeClaim); ok && claim.Status.Phase == corev1.ClaimBound {
			l.bound.reach(claim.Name, time.Now())
		}
	}
	onPod := func(obj interface{}) {
		if pod, ok := obj.(*corev1.Pod); ok && pod.Status.Phase == corev1.PodRunning {
			l.running.reach(pod.Name, time.Now())
		}
	}
	gone := func(ms *milestones) func(interface{}) {
		return func(obj interface{}) {
			if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tombstone.Obj
			}
			if object, ok := obj.(metav1.Object); ok {
				ms.reach(object.GetName(), time.Now())
			}
		}
	}
	if _, err := factory.Core().V1().PersistentVolumeClaims().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onClaim,
		UpdateFunc: func(_, obj interface{}) { onClaim(obj) },
		DeleteFunc: gone(l.claimGon),
	}); err != nil {
		return err
	}
	if _, err := factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onPod,
		UpdateFunc: func(_, obj interface{}) { onPod(obj) },
		DeleteFunc: gone(l.podGone),
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer for %v in %s did not sync", typ, l.ns)
		}
	}
	return nil
}

type latencySample struct {
	apiCreate, bound, running time.Duration
	waited                    bool
}

// sample gets one claim of kind named name, runs a pod on it, and removes both again before
// returning, so that the next sample starts on a quiet machine.
func (l *latencyRun) sample(ctx context.Context, kind claimKind, name string) (latencySample, error) {
	var result latencySample
	start := time.Now()
	switch kind {
	case kindCheckout:
		checkout, err := l.pvpool.PvpoolV1alpha1().Checkouts(l.ns).Create(ctx, &v1alpha1.Checkout{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       v1alpha1.CheckoutSpec{PoolRef: v1alpha1.PoolReference{Name: l.pool}},
		}, metav1.CreateOptions{})
		if err != nil {
			return result, fmt.Errorf("creating checkout %s: %w", name, err)
		}
		result.waited = !handout.IsAcquired(checkout)
	case kindDynamic:
		_, err := l.kube.CoreV1().PersistentVolumeClaims(l.ns).Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       l.claimSpec(l.cfg.storageClass),
		}, metav1.CreateOptions{})
		if err != nil {
			return result, fmt.Errorf("creating claim %s: %w", name, err)
		}
	}
	result.apiCreate = time.Since(start)
	if _, err := l.kube.CoreV1().Pods(l.ns).Create(ctx, l.benchPod(name, name), metav1.CreateOptions{}); err != nil {
		return result, fmt.Errorf("creating pod %s: %w", name, err)
	}
	boundAt, err := l.bound.wait(ctx, name, l.cfg.sampleTimeout)
	if err != nil {
		return result, fmt.Errorf("%s claim %s Bound: %w", kind, name, err)
	}
	runningAt, err := l.running.wait(ctx, name, l.cfg.sampleTimeout)
	if err != nil {
		return result, fmt.Errorf("pod %s on %s claim Running: %w", name, kind, err)
	}
	result.bound, result.running = boundAt.Sub(start), runningAt.Sub(start)

	if err := l.kube.CoreV1().Pods(l.ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		return result, fmt.Errorf("deleting pod %s: %w", name, err)
	}
	switch kind {
	case kindCheckout:
		err = l.pvpool.PvpoolV1alpha1().Checkouts(l.ns).Delete(ctx, name, metav1.DeleteOptions{})
	case kindDynamic:
		err = l.kube.CoreV1().PersistentVolumeClaims(l.ns).Delete(ctx, name, metav1.DeleteOptions{})
	}
	if err != nil {
		return result, fmt.Errorf("deleting %s %s: %w", kind, name, err)
	}
	if _, err := l.podGone.wait(ctx, name, l.cfg.sampleTimeout); err != nil {
		return result, fmt.Errorf("pod %s gone: %w", name, err)
	}
	if _, err := l.claimGon.wait(ctx, name, l.cfg.sampleTimeout); err != nil {
		return result, fmt.Errorf("claim %s gone: %w", name, err)
	}
	return result, nil
}

// runLatency measures cfg.checkouts checkouts and as many dynamically provisioned claims, in pairs
// whose order alternates (checkout first, then dynamic first), so that drift in the machine's load
// hits both kinds alike.
func (b *bench) runLatency(ctx context.Context, progress func(string, ...interface{})) (*LatencyReport, error) {
	ns, err := b.createNamespace(ctx, "bench-latency-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := b.deleteNamespace(ctx, ns); err != nil {
			klog.ErrorS(err, "Cleaning up the latency namespace")
		}
	}()
	run := &latencyRun{bench: b, ns: ns, pool: "latency", bound: newMilestones(), running: newMilestones(),
		podGone: newMilestones(), claimGon: newMilestones()}
	claims, err := b.watchClaims(ctx, ns)
	if err != nil {
		return nil, err
	}
	defer claims.stop()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := run.watch(watchCtx); err != nil {
		return nil, err
	}
	progress("latency: filling a pool of %d replicas in %s", b.cfg.latencyPool, ns)
	_, fill, err := b.createPoolAndWait(ctx, ns, b.pool(run.pool, int32(b.cfg.latencyPool), false), claims)
	if err != nil {
		return nil, err
	}
	progress("latency: pool filled in %s", fill.Round(100*time.Millisecond))

	report := &LatencyReport{StorageClass: b.cfg.storageClass, VolumeMode: b.cfg.volumeMode, Size: b.cfg.size, PoolReplicas: b.cfg.latencyPool}
	samples := map[claimKind]*RawSample{kindCheckout: &report.Checkout.Samples, kindDynamic: &report.Dynamic.Samples}
	started := time.Now()
	for i := 0; i < b.cfg.checkouts; i++ {
		order := []claimKind{kindCheckout, kindDynamic}
		if i%2 == 1 {
			order = []claimKind{kindDynamic, kindCheckout}
		}
		for _, kind := range order {
			name := fmt.Sprintf("%s-%04d", kind, i)
			result, err := run.sample(ctx, kind, name)
			if err != nil {
				return nil, err
			}
			raw := samples[kind]
			raw.APICreateMs = append(raw.APICreateMs, milliseconds([]time.Duration{result.apiCreate})[0])
			raw.BoundMs = append(raw.BoundMs, milliseconds([]time.Duration{result.bound})[0])
			raw.RunningMs = append(raw.RunningMs, milliseconds([]time.Duration{result.running})[0])
			if result.waited {
				report.CheckoutsWaited++
				klog.InfoS("Checkout found no replica available", "checkout", klog.KRef(ns, name))
			}
		}
		if done := i + 1; done%10 == 0 || done == b.cfg.checkouts {
			progress("latency: %d/%d pairs (%s)", done, b.cfg.checkouts, time.Since(started).Round(time.Second))
		}
	}
	for _, kind := range []*KindLatency{&report.Checkout, &report.Dynamic} {
		kind.APICreate = summarize(kind.Samples.APICreateMs)
		kind.Bound = summarize(kind.Samples.BoundMs)
		kind.Running = summarize(kind.Samples.RunningMs)
	}
	report.APICreateRatio = ratios(report.Dynamic.APICreate, report.Checkout.APICreate)
	report.BoundRatio = ratios(report.Dynamic.Bound, report.Checkout.Bound)
	report.RunningRatio = ratios(report.Dynamic.Running, report.Checkout.Running)
	return report, nil
}
