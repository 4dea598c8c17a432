package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/replica"
)

// sync reconciles one pool: it replaces stale replicas, scales the pool up or down, moves
// initializing replicas forward and reports the status. All writes of one reconcile run in
// parallel. It returns how long to wait before looking at the pool again when only time (a backoff,
// an unconfirmed write) can change the outcome.
func (c *Controller) sync(ctx context.Context, namespace, name string) (time.Duration, error) {
	logger := klog.FromContext(ctx)
	pool, err := c.poolLister.Pools(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if pool.DeletionTimestamp != nil {
		// The garbage collector removes the replicas the pool owns; checked-out claims are no longer
		// owned by it.
		return 0, nil
	}
	key := poolKey(namespace, name)
	now := c.options.Clock.Now()
	desired := int32(1)
	if pool.Spec.Replicas != nil {
		desired = *pool.Spec.Replicas
	}

	claims, cached, err := c.replicaClaims(pool)
	if err != nil {
		return 0, c.updateStatus(ctx, pool, c.status(pool, desired, 0, 0, settlementInput{invalid: err.Error()}))
	}
	alive := make(map[types.UID]bool, len(claims))
	for _, claim := range claims {
		if claim.DeletionTimestamp == nil {
			alive[claim.UID] = true
		}
	}
	unseenCreates, deleting, inflightExpiry := c.inflight.pending(key, cached, alive)

	var (
		writes   []write
		active   []*replicaView
		stale    []*replicaView
		assessed []error
	)
	for _, claim := range claims {
		if claim.DeletionTimestamp != nil || deleting[claim.UID] {
			writes = append(writes, c.cleanupTerminating(claim)...)
			continue
		}
		view, err := c.assess(ctx, pool, claim)
		if err != nil {
			// Still a replica, only left alone this time: not counting it would create another.
			assessed = append(assessed, err)
			active = append(active, &replicaView{claim: claim, available: claim.Annotations[replica.AnnotationAvailable] == "true"})
			continue
		}
		if view.staleReason != "" {
			stale = append(stale, view)
		} else {
			active = append(active, view)
		}
	}

	// A job that succeeds clears the pool's failures, so the next failure backs off from the start;
	// failures seen in this reconcile are counted after that.
	for _, view := range active {
		if view.becomesAvailable {
			c.backoff.reset(pool.UID)
			break
		}
	}
	for _, view := range stale {
		if view.jobFailed {
			c.backoff.recordFailure(pool.UID, view.claim.UID, view.staleMessage, now)
		}
	}
	backoffLeft, failing, failure := c.backoff.remaining(pool.UID, now)

	for _, view := range stale {
		view := view
		writes = append(writes, write{
			kind: writeStaleDelete,
			run:  func(ctx context.Context) error { return c.deleteReplica(ctx, pool, view.claim) },
			done: func() {
				c.recorder.Eventf(pool, corev1.EventTypeWarning, EventStaleReplica, "Deleted stale replica %s: %s", view.claim.Name, view.staleMessage)
			},
		})
	}

	count := int32(len(active)) + int32(unseenCreates)
	var victims []*replicaView
	if excess := count - desired; excess > 0 {
		scaleDownOrder(active)
		n := min(int(excess), len(active))
		victims, active = active[:n], active[n:]
	}
	for _, view := range victims {
		writes = append(writes, write{
			kind:   writeScaleDownDelete,
			run:    func(ctx context.Context) error { return c.deleteReplica(ctx, pool, view.claim) },
			victim: view,
		})
	}
	for _, view := range active {
		if view.next != nil {
			kind := writeReplica
			if view.becomesAvailable {
				kind = writeMarkAvailable
			}
			writes = append(writes, write{kind: kind, run: view.next})
		}
	}

	var invalid string
	var requeueAfter time.Duration
	if missing := desired - count; missing > 0 {
		problem, err := c.templateProblem(ctx, pool)
		switch {
		case err != nil:
			assessed = append(assessed, err)
		case problem != "":
			invalid = problem
		case backoffLeft > 0:
			logger.V(2).Info("Replacing failed replicas later", "after", backoffLeft, "missing", missing)
			requeueAfter = backoffLeft
		default:
			for range missing {
				writes = append(writes, write{
					kind: writeCreate,
					run:  func(ctx context.Context) error { return c.createClaim(ctx, pool) },
				})
			}
		}
	}

	results := c.runWrites(ctx, writes)

	var (
		created, deleted, marked int32
		failures                 = assessed
	)
	for i, w := range writes {
		err := results[i]
		var invalidErr invalidError
		switch {
		case errors.Is(err, errNamespaceTerminating):
			continue
		case errors.As(err, &invalidErr):
			invalid = invalidErr.Error()
			continue
		case err != nil:
			failures = append(failures, err)
			continue
		}
		switch w.kind {
		case writeCreate:
			created++
		case writeScaleDownDelete:
			deleted++
		case writeMarkAvailable:
			marked++
		}
		if w.done != nil {
			w.done()
		}
	}
	if created > 0 {
		c.recorder.Eventf(pool, corev1.EventTypeNormal, EventPoolScaling, "Created %d replicas", created)
	}
	if deleted > 0 {
		c.recorder.Eventf(pool, corev1.EventTypeNormal, EventPoolScaling, "Deleted %d replicas", deleted)
	}
	if invalid != "" {
		previous := findCondition(pool.Status.Conditions, v1alpha1.PoolSettlement)
		if previous == nil || previous.Reason != pvpool.PoolSettlementReasonInvalid || previous.Message != "Replicas cannot be created: "+invalid {
			c.recorder.Event(pool, corev1.EventTypeWarning, EventInvalid, invalid)
		}
	}

	// The status describes the pool as these writes left it; writes that failed are retried.
	var replicas, available int32
	for _, view := range victims {
		if results[indexOfVictimWrite(writes, view)] != nil {
			replicas++
			if view.available {
				available++
			}
		}
	}
	cleaning := false
	for _, view := range active {
		replicas++
		if view.available {
			available++
		}
		cleaning = cleaning || view.cleanup
	}
	replicas += int32(unseenCreates) + created
	available += marked

	settlement := settlementInput{
		desired:   desired,
		replicas:  replicas,
		available: available,
		busy:      len(stale) > 0 || len(victims) > 0 || len(deleting) > 0 || unseenCreates > 0 || created > 0 || cleaning,
		invalid:   invalid,
	}
	if failing {
		settlement.jobFailure = failure
	}
	status := c.status(pool, desired, replicas, available, settlement)
	if condition := findCondition(status.Conditions, v1alpha1.PoolSettlement); condition != nil && condition.Status == corev1.ConditionTrue {
		c.backoff.reset(pool.UID)
	}
	if err := c.updateStatus(ctx, pool, status); err != nil {
		failures = append(failures, err)
	}
	if len(failures) > 0 {
		return 0, errors.Join(failures...)
	}

	if unseenCreates > 0 || len(deleting) > 0 {
		if requeueAfter == 0 || inflightExpiry < requeueAfter {
			requeueAfter = inflightExpiry
		}
	}
	logger.V(4).Info("Reconciled pool", "desired", desired, "replicas", replicas, "available", available,
		"created", created, "deleted", deleted, "stale", len(stale), "requeueAfter", requeueAfter)
	return requeueAfter, nil
}

func (c *Controller) status(pool *v1alpha1.Pool, desired, replicas, available int32, settlement settlementInput) v1alpha1.PoolStatus {
	now := metav1.NewTime(c.options.Clock.Now())
	status := v1alpha1.PoolStatus{
		ObservedGeneration: pool.Generation,
		Replicas:           replicas,
		AvailableReplicas:  available,
		Conditions:         append([]v1alpha1.PoolCondition(nil), pool.Status.Conditions...),
	}
	previousSettlement := findCondition(pool.Status.Conditions, v1alpha1.PoolSettlement)
	status.Conditions = setCondition(status.Conditions, availableCondition(desired, available), now)
	status.Conditions = setCondition(status.Conditions, settlementCondition(settlement, previousSettlement), now)
	return status
}

// cleanupTerminating deletes the jobs of a claim on its way out: their pods would keep it in use,
// and so undeleted, for as long as they run.
func (c *Controller) cleanupTerminating(claim *corev1.PersistentVolumeClaim) []write {
	var writes []write
	for _, role := range []string{jobRoleInit, jobRoleBind} {
		if job, state := c.jobFor(claim, role); state != jobMissing && state != jobForeign && job.DeletionTimestamp == nil {
			writes = append(writes, write{kind: writeReplica, run: func(ctx context.Context) error { return c.deleteJob(ctx, job) }})
		}
	}
	return writes
}

type writeKind int

const (
	writeReplica writeKind = iota
	writeMarkAvailable
	writeCreate
	writeScaleDownDelete
	writeStaleDelete
)

// write is one API write of a reconcile; done runs after it succeeded.
type write struct {
	kind   writeKind
	run    func(ctx context.Context) error
	done   func()
	victim *replicaView
}

func indexOfVictimWrite(writes []write, view *replicaView) int {
	for i := range writes {
		if writes[i].victim == view {
			return i
		}
	}
	panic(fmt.Sprintf("no write for victim %s", view.claim.Name))
}

// runWrites runs writes concurrently, at most MaxConcurrentWrites at a time, and returns their
// errors in order.
func (c *Controller) runWrites(ctx context.Context, writes []write) []error {
	results := make([]error, len(writes))
	slots := make(chan struct{}, c.options.MaxConcurrentWrites)
	var wg sync.WaitGroup
	for i := range writes {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			results[i] = writes[i].run(ctx)
		}()
	}
	wg.Wait()
	return results
}
