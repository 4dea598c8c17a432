package pool

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// failureBackoff delays the replacement of replicas whose jobs failed, per pool, doubling the delay
// with every failure so that a job that always fails does not churn claims and volumes.
type failureBackoff struct {
	base, max time.Duration

	mu    sync.Mutex
	pools map[types.UID]*poolBackoff
}

type poolBackoff struct {
	failures int
	until    time.Time
	// counted holds the replicas whose failure was already counted, so that a failed replica seen
	// again (its delete did not go through yet) does not double the delay again.
	counted map[types.UID]bool
	// message describes the latest failure, for the pool's Settlement condition.
	message string
}

func newFailureBackoff(base, max time.Duration) *failureBackoff {
	return &failureBackoff{base: base, max: max, pools: map[types.UID]*poolBackoff{}}
}

// recordFailure counts the failure of replica in pool and returns the delay before the pool may
// create replicas again.
func (b *failureBackoff) recordFailure(pool, replica types.UID, message string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	p, ok := b.pools[pool]
	if !ok {
		p = &poolBackoff{counted: map[types.UID]bool{}}
		b.pools[pool] = p
	}
	p.message = message
	if !p.counted[replica] {
		p.counted[replica] = true
		p.failures++
		delay := b.base
		for i := 1; i < p.failures && delay < b.max; i++ {
			delay *= 2
		}
		delay = min(delay, b.max)
		p.until = now.Add(delay)
	}
	return max(p.until.Sub(now), 0)
}

// remaining returns how long pool must still wait before creating replicas, and the message of the
// failure that caused the wait; failing tells whether the pool has failures not yet cleared by a
// success.
func (b *failureBackoff) remaining(pool types.UID, now time.Time) (wait time.Duration, failing bool, message string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p, ok := b.pools[pool]
	if !ok {
		return 0, false, ""
	}
	return max(p.until.Sub(now), 0), true, p.message
}

// reset clears pool's failures: one of its jobs succeeded, so the next failure starts over at the
// base delay.
func (b *failureBackoff) reset(pool types.UID) {
	b.forget(pool)
}

func (b *failureBackoff) forget(pool types.UID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.pools, pool)
}
