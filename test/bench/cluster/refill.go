package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
)

// RefillReport is item 3: how long a pool of N takes to have N replicas available again after N
// checkouts emptied it, without and with an init job.
type RefillReport struct {
	Replicas int        `json:"replicas"`
	Plain    RefillKind `json:"plain"`
	InitJob  RefillKind `json:"initJob"`
}

// RefillKind is the refill of one kind of pool over several rounds.
type RefillKind struct {
	// FillSeconds is the first fill, from the pool's creation.
	FillSeconds float64 `json:"fillSeconds"`
	// Refill is the time from the last of the N checkouts returning to N replicas available again,
	// judged from the replica claims (the pool's status follows a little later).
	Refill    Summary   `json:"refill"`
	RefillMs  []float64 `json:"refillMs"`
	Checkouts Summary   `json:"checkoutCreate"`
}

func (b *bench) runRefill(ctx context.Context, progress func(string, ...interface{})) (*RefillReport, error) {
	report := &RefillReport{Replicas: b.cfg.refillReplicas}
	for _, initJob := range []bool{false, true} {
		kind, err := b.refillKind(ctx, initJob, progress)
		if err != nil {
			return nil, err
		}
		if initJob {
			report.InitJob = *kind
		} else {
			report.Plain = *kind
		}
	}
	return report, nil
}

func (b *bench) refillKind(ctx context.Context, initJob bool, progress func(string, ...interface{})) (*RefillKind, error) {
	name := "refill-plain"
	if initJob {
		name = "refill-init-job"
	}
	ns, err := b.createNamespace(ctx, "bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := b.deleteNamespace(ctx, ns); err != nil {
			klog.ErrorS(err, "Cleaning up a refill namespace", "namespace", ns)
		}
	}()
	claims, err := b.watchClaims(ctx, ns)
	if err != nil {
		return nil, err
	}
	defer claims.stop()
	replicas := b.cfg.refillReplicas
	pool, fill, err := b.createPoolAndWait(ctx, ns, b.pool(name, int32(replicas), initJob), claims)
	if err != nil {
		return nil, err
	}
	kind := &RefillKind{FillSeconds: fill.Seconds()}
	progress("refill %s: pool of %d filled in %s", name, replicas, fill.Round(100*time.Millisecond))
	var createMs []float64
	for round := 0; round < b.cfg.refillRounds; round++ {
		names := make([]string, replicas)
		_, latencies, err := runConcurrently(ctx, min(replicas, 8), replicas, func(ctx context.Context, i int) error {
			names[i] = fmt.Sprintf("r%d-%04d", round, i)
			_, err := b.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(ctx, &v1alpha1.Checkout{
				ObjectMeta: metav1.ObjectMeta{Name: names[i]},
				Spec:       v1alpha1.CheckoutSpec{PoolRef: v1alpha1.PoolReference{Name: pool.Name}},
			}, metav1.CreateOptions{})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("checking out the pool %s/%s: %w", ns, pool.Name, err)
		}
		emptied := time.Now()
		createMs = append(createMs, milliseconds(latencies)...)
		// The informer must have seen the handouts before the available replicas are counted, or the
		// count would still be the full pool. A handout takes the replica before it creates the
		// checkout's claim, and one watch delivers both in that order: once every checkout's claim is
		// seen, so is every take.
		if err := claims.waitClaimsSeen(ctx, names, b.cfg.sampleTimeout); err != nil {
			return nil, err
		}
		at, err := claims.waitAvailable(ctx, pool, replicas, b.cfg.fillTimeout(replicas))
		if err != nil {
			return nil, err
		}
		kind.RefillMs = append(kind.RefillMs, milliseconds([]time.Duration{at.Sub(emptied)})[0])
		progress("refill %s: round %d/%d: %d replicas back in %s", name, round+1, b.cfg.refillRounds, replicas, at.Sub(emptied).Round(100*time.Millisecond))

		if err := b.pvpool.PvpoolV1alpha1().Checkouts(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			return nil, fmt.Errorf("deleting the checkouts in %s: %w", ns, err)
		}
		if err := b.waitOnlyReplicas(ctx, pool, claims, replicas); err != nil {
			return nil, err
		}
	}
	kind.Refill = summarize(kind.RefillMs)
	kind.Checkouts = summarize(createMs)
	return kind, nil
}

// waitClaimsSeen waits until the informer holds a claim of each name.
func (w *claimWatch) waitClaimsSeen(ctx context.Context, names []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		list, err := w.lister()
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, claim := range list {
			if claim.Status.Phase == corev1.ClaimBound {
				seen[claim.Name] = true
			}
		}
		missing := 0
		for _, name := range names {
			if !seen[name] {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d checkout claims not seen Bound: %w", missing, ctx.Err())
		case <-w.changed:
		}
	}
}
