package pool

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// inflightTTL bounds how long a write the informer has not shown yet is trusted over the cache. A
// watch that lost the event is relisted well within it.
const inflightTTL = time.Minute

// inflight remembers the claims this controller created or deleted that the informer cache does
// not reflect yet. Without it a reconcile that runs before the cache catches up would create the
// same replicas again (or delete more than it should): claims are created with generateName, so
// nothing else makes a second create fail.
type inflight struct {
	clock clock.PassiveClock

	mu    sync.Mutex
	pools map[string]*poolInflight
}

type poolInflight struct {
	// created holds names of claims created but not yet seen in the cache.
	created map[string]time.Time
	// observed holds names of new claims the cache showed before their create call returned, so
	// that recording the create afterwards does not make a claim that is already gone look unseen.
	observed map[string]time.Time
	// deleted holds UIDs of claims deleted but still shown alive in the cache.
	deleted map[types.UID]time.Time
}

func newInflight(clock clock.PassiveClock) *inflight {
	return &inflight{clock: clock, pools: map[string]*poolInflight{}}
}

func (f *inflight) poolLocked(key string) *poolInflight {
	p, ok := f.pools[key]
	if !ok {
		p = &poolInflight{created: map[string]time.Time{}, observed: map[string]time.Time{}, deleted: map[types.UID]time.Time{}}
		f.pools[key] = p
	}
	return p
}

func (f *inflight) created(key, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.poolLocked(key)
	if _, seen := p.observed[name]; seen {
		delete(p.observed, name)
		return
	}
	p.created[name] = f.clock.Now()
}

func (f *inflight) deleted(key string, uid types.UID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.poolLocked(key).deleted[uid] = f.clock.Now()
}

// observeCreated notes that the cache shows a claim created at creationTime.
func (f *inflight) observeCreated(key, name string, creationTime time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.pools[key]; ok {
		if _, pending := p.created[name]; pending {
			delete(p.created, name)
			return
		}
	}
	// Only a claim this young can have a create call still on its way back.
	if now := f.clock.Now(); now.Sub(creationTime) < inflightTTL {
		f.poolLocked(key).observed[name] = now
	}
}

func (f *inflight) observeDeleted(key string, uid types.UID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.pools[key]; ok {
		delete(p.deleted, uid)
	}
}

func (f *inflight) forget(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pools, key)
}

// pending reconciles the record with what the cache shows (cachedNames: claims of the pool in the
// cache; aliveUIDs: those of them not being deleted) and returns how many created claims are still unseen, which deleted claims the cache
// still shows, and when the oldest of these records expires.
func (f *inflight) pending(key string, cachedNames map[string]bool, aliveUIDs map[types.UID]bool) (unseenCreates int, deleting map[types.UID]bool, expiresIn time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.pools[key]
	if !ok {
		return 0, nil, 0
	}
	now := f.clock.Now()
	noteExpiry := func(at time.Time) {
		left := at.Add(inflightTTL).Sub(now)
		if expiresIn == 0 || left < expiresIn {
			expiresIn = left
		}
	}
	for name, at := range p.created {
		if cachedNames[name] || now.Sub(at) >= inflightTTL {
			delete(p.created, name)
			continue
		}
		unseenCreates++
		noteExpiry(at)
	}
	deleting = map[types.UID]bool{}
	for uid, at := range p.deleted {
		if !aliveUIDs[uid] || now.Sub(at) >= inflightTTL {
			delete(p.deleted, uid)
			continue
		}
		deleting[uid] = true
		noteExpiry(at)
	}
	for name, at := range p.observed {
		if now.Sub(at) >= inflightTTL {
			delete(p.observed, name)
		}
	}
	if len(p.created) == 0 && len(p.deleted) == 0 && len(p.observed) == 0 {
		delete(f.pools, key)
	}
	return unseenCreates, deleting, expiresIn
}
