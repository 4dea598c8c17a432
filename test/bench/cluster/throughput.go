package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/handout"
	"github.com/pvpool/pvpool/pkg/replica"
)

// labelLevel tells which concurrency level created a checkout or raw claim.
const labelLevel = "bench.pvpool.puppet.com/clients"

// ThroughputReport is item 2: checkouts per second against a pool holding a replica for every one
// of them, against plain claim creates per second on kube-apiserver, at each number of concurrent
// clients.
type ThroughputReport struct {
	PoolReplicas int `json:"poolReplicas"`
	// PoolFillSeconds is how long the pool took to fill from nothing.
	PoolFillSeconds float64 `json:"poolFillSeconds"`
	// UnprovisionedClass is the StorageClass of the raw claims: no provisioner and
	// WaitForFirstConsumer, so a claim create costs the API server and nothing else.
	UnprovisionedClass string            `json:"unprovisionedClass"`
	Levels             []ThroughputLevel `json:"levels"`
	// DistinctVolumes is how many different volumes all checkouts of all levels held; it equals
	// the number of checkouts, or the run fails.
	DistinctVolumes int `json:"distinctVolumes"`
	// Violations lists every handout found wrong (a volume held twice, a claim not Bound to its
	// checkout's volume, volumes orphaned by a replaced claim); the run measures on and then fails.
	Violations []string `json:"violations,omitempty"`
}

// ThroughputLevel is one number of concurrent clients.
type ThroughputLevel struct {
	Clients            int     `json:"clients"`
	Checkouts          int     `json:"checkouts"`
	CheckoutSeconds    float64 `json:"checkoutSeconds"`
	CheckoutsPerSecond float64 `json:"checkoutsPerSecond"`
	CheckoutCreate     Summary `json:"checkoutCreate"`
	// AcquiredInRequest counts checkouts whose create response already held a volume.
	AcquiredInRequest     int     `json:"acquiredInRequest"`
	Claims                int     `json:"claims"`
	ClaimSeconds          float64 `json:"claimSeconds"`
	ClaimCreatesPerSecond float64 `json:"claimCreatesPerSecond"`
	ClaimCreate           Summary `json:"claimCreate"`
	// Ratio is checkouts/s divided by claim creates/s.
	Ratio float64 `json:"ratio"`
	// RefillSeconds is how long the pool took to have every replica available again once this
	// level's checkouts were deleted.
	RefillSeconds float64 `json:"refillSeconds"`
	// OrphanedVolumes counts volumes whose claimRef names a checkout claim of this level by a UID that
	// is no longer the claim's: the checkout's first claim was deleted and replaced, and its first
	// volume left behind. Each one is a replica taken from the pool for nothing.
	OrphanedVolumes int `json:"orphanedVolumes"`
}

// runConcurrently runs op(0..total-1) on clients goroutines and returns the wall time and each
// call's latency; the first error stops the rest.
func runConcurrently(ctx context.Context, clients, total int, op func(ctx context.Context, i int) error) (time.Duration, []time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	latencies := make([]time.Duration, total)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= total || ctx.Err() != nil {
					return
				}
				callStart := time.Now()
				if err := op(ctx, i); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				latencies[i] = time.Since(callStart)
			}
		}()
	}
	wg.Wait()
	return time.Since(start), latencies, firstErr
}

func (b *bench) runThroughput(ctx context.Context, memory *memoryMonitor, progress func(string, ...interface{})) (*ThroughputReport, error) {
	ns, err := b.createNamespace(ctx, "bench-throughput-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := b.deleteNamespace(ctx, ns); err != nil {
			klog.ErrorS(err, "Cleaning up the throughput namespace")
		}
	}()
	class, err := b.createUnprovisionedClass(ctx)
	if err != nil {
		return nil, err
	}
	claims, err := b.watchClaims(ctx, ns)
	if err != nil {
		return nil, err
	}
	defer claims.stop()

	perLevel := b.cfg.throughputCheckouts
	progress("throughput: filling a pool of %d replicas in %s", perLevel, ns)
	pool, fill, err := b.createPoolAndWait(ctx, ns, b.pool("throughput", int32(perLevel), false), claims)
	if err != nil {
		return nil, err
	}
	report := &ThroughputReport{PoolReplicas: perLevel, PoolFillSeconds: fill.Seconds(), UnprovisionedClass: class}
	progress("throughput: pool filled in %s", fill.Round(100*time.Millisecond))

	sampling, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		memory.sampleWhile(sampling, b.cfg.memoryInterval)
	}()
	defer func() { stopSampling(); <-sampled }()

	handouts := volumeHandouts{}
	for index, clients := range b.cfg.clients {
		level := ThroughputLevel{Clients: clients, Checkouts: perLevel, Claims: perLevel}
		levelLabels := map[string]string{labelBench: b.runID, labelLevel: fmt.Sprint(clients)}
		createClaims := func() error {
			elapsed, latencies, err := runConcurrently(ctx, clients, perLevel, func(ctx context.Context, i int) error {
				_, err := b.kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("raw-c%d-%04d", clients, i), Labels: levelLabels},
					Spec:       b.claimSpec(class),
				}, metav1.CreateOptions{})
				return err
			})
			if err != nil {
				return fmt.Errorf("creating raw claims with %d clients: %w", clients, err)
			}
			level.ClaimSeconds = elapsed.Seconds()
			level.ClaimCreatesPerSecond = float64(perLevel) / elapsed.Seconds()
			level.ClaimCreate = summarize(milliseconds(latencies))
			return nil
		}
		var acquired atomic.Int64
		createCheckouts := func() error {
			elapsed, latencies, err := runConcurrently(ctx, clients, perLevel, func(ctx context.Context, i int) error {
				checkout, err := b.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(ctx, &v1alpha1.Checkout{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("tp-c%d-%04d", clients, i), Labels: levelLabels},
					Spec:       v1alpha1.CheckoutSpec{PoolRef: v1alpha1.PoolReference{Name: pool.Name}},
				}, metav1.CreateOptions{})
				if err == nil && handout.IsAcquired(checkout) {
					acquired.Add(1)
				}
				return err
			})
			if err != nil {
				return fmt.Errorf("creating checkouts with %d clients: %w", clients, err)
			}
			level.CheckoutSeconds = elapsed.Seconds()
			level.CheckoutsPerSecond = float64(perLevel) / elapsed.Seconds()
			level.CheckoutCreate = summarize(milliseconds(latencies))
			return nil
		}
		// Alternate which goes first, so neither always runs on the machine the other just loaded.
		steps := []func() error{createClaims, createCheckouts}
		if index%2 == 1 {
			steps = []func() error{createCheckouts, createClaims}
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return nil, err
			}
		}
		level.AcquiredInRequest = int(acquired.Load())
		level.Ratio = ratio(level.CheckoutsPerSecond, level.ClaimCreatesPerSecond)
		progress("throughput: %d clients: %.1f checkouts/s, %.1f claim creates/s (%d of %d acquired in the request)",
			clients, level.CheckoutsPerSecond, level.ClaimCreatesPerSecond, level.AcquiredInRequest, perLevel)

		orphaned, violations, err := b.verifyHandouts(ctx, ns, levelLabels, perLevel, handouts)
		if err != nil {
			return nil, err
		}
		level.OrphanedVolumes = orphaned
		if orphaned > 0 {
			// Not a volume shared by two checkouts, but one checkout that took two: the pool is drained
			// twice as fast and, when the claim goes before the volume's reclaim policy is restored, the
			// first volume is kept forever (Retain, and no longer marked as held).
			violations = append(violations, fmt.Sprintf("%d clients: %d volumes orphaned: their checkout's first claim was deleted and replaced with another volume", clients, orphaned))
		}
		for _, violation := range violations {
			klog.ErrorS(nil, "Wrong handout", "clients", clients, "violation", violation)
		}
		report.Violations = append(report.Violations, violations...)

		// Give everything back and wait for a full pool, so every level starts alike.
		refillStart := time.Now()
		selector := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: levelLabels})
		if err := b.pvpool.PvpoolV1alpha1().Checkouts(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: selector}); err != nil {
			return nil, fmt.Errorf("deleting the checkouts of %d clients: %w", clients, err)
		}
		if err := b.kube.CoreV1().PersistentVolumeClaims(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: selector}); err != nil {
			return nil, fmt.Errorf("deleting the raw claims of %d clients: %w", clients, err)
		}
		if err := b.waitOnlyReplicas(ctx, pool, claims, perLevel); err != nil {
			return nil, err
		}
		level.RefillSeconds = time.Since(refillStart).Seconds()
		progress("throughput: %d clients: pool refilled in %s", clients, time.Since(refillStart).Round(100*time.Millisecond))
		report.Levels = append(report.Levels, level)
	}
	report.DistinctVolumes = len(handouts)
	if len(report.Violations) > 0 {
		return report, fmt.Errorf("%d wrong handouts, the first: %s", len(report.Violations), report.Violations[0])
	}
	return report, nil
}

// verifyHandouts checks the checkouts of one level once they all hold a volume: each holds a
// different volume (also from every earlier level), its claim is Bound to that volume, and the
// volume is bound to that claim. Anything else is a double handout and fails the run.
func (b *bench) verifyHandouts(ctx context.Context, ns string, levelLabels map[string]string, want int, handouts volumeHandouts) (orphaned int, violations []string, err error) {
	selector := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: levelLabels})
	var checkouts []v1alpha1.Checkout
	// Checkouts that found no replica in the request are served by the controller shortly after.
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, b.cfg.fillTimeout(want), true, func(ctx context.Context) (bool, error) {
		list, err := b.pvpool.PvpoolV1alpha1().Checkouts(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		checkouts = list.Items
		for i := range checkouts {
			if !handout.IsAcquired(&checkouts[i]) {
				return false, nil
			}
		}
		return len(checkouts) == want, nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("waiting for %d checkouts (%s) to hold a volume: %w", want, selector, err)
	}
	claimList, err := b.kube.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, nil, err
	}
	claimsByName := map[string]*corev1.PersistentVolumeClaim{}
	for i := range claimList.Items {
		claimsByName[claimList.Items[i].Name] = &claimList.Items[i]
	}
	volumeList, err := b.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, nil, err
	}
	volumes := map[string]*corev1.PersistentVolume{}
	for i := range volumeList.Items {
		volumes[volumeList.Items[i].Name] = &volumeList.Items[i]
	}
	checkoutClaims := map[string]bool{}
	for _, checkout := range checkouts {
		key := checkout.Namespace + "/" + checkout.Name
		checkoutClaims[checkout.Status.VolumeClaimRef.Name] = true
		if err := handouts.record(checkout.Status.VolumeName, key); err != nil {
			violations = append(violations, err.Error())
			continue
		}
		claim := claimsByName[checkout.Status.VolumeClaimRef.Name]
		if claim == nil {
			violations = append(violations, fmt.Sprintf("checkout %s holds volume %s but its claim %q does not exist", key, checkout.Status.VolumeName, checkout.Status.VolumeClaimRef.Name))
			continue
		}
		if claim.Spec.VolumeName != checkout.Status.VolumeName || claim.Status.Phase != corev1.ClaimBound {
			violations = append(violations, fmt.Sprintf("checkout %s holds volume %s but its claim %s is %s on volume %q", key, checkout.Status.VolumeName, claim.Name, claim.Status.Phase, claim.Spec.VolumeName))
			continue
		}
		volume := volumes[checkout.Status.VolumeName]
		if volume == nil || volume.Spec.ClaimRef == nil || volume.Spec.ClaimRef.Namespace != ns || volume.Spec.ClaimRef.Name != claim.Name || volume.Spec.ClaimRef.UID != claim.UID {
			violations = append(violations, fmt.Sprintf("volume %s of checkout %s is not bound to its claim %s/%s", checkout.Status.VolumeName, key, ns, claim.Name))
		}
	}
	for _, volume := range volumes {
		ref := volume.Spec.ClaimRef
		if ref == nil || ref.Namespace != ns || !checkoutClaims[ref.Name] {
			continue
		}
		if claim := claimsByName[ref.Name]; claim == nil || claim.UID != ref.UID {
			orphaned++
		}
	}
	return orphaned, violations, nil
}

// waitOnlyReplicas waits until the namespace holds nothing but the pool's replicas, all available:
// every claim of a deleted checkout or raw claim is gone and the pool has refilled.
func (b *bench) waitOnlyReplicas(ctx context.Context, pool *v1alpha1.Pool, claims *claimWatch, replicas int) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.fillTimeout(replicas))
	defer cancel()
	for {
		list, err := claims.lister()
		if err != nil {
			return err
		}
		others := 0
		for _, claim := range list {
			if !replica.OwnedBy(pool, claim) || replica.IsTaken(claim) {
				others++
			}
		}
		available := availableReplicas(pool, list)
		if others == 0 && available == replicas {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pool %s/%s: %d of %d replicas available and %d other claims left: %w", pool.Namespace, pool.Name, available, replicas, others, ctx.Err())
		case <-claims.changed:
		}
	}
}
