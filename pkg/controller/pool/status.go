package pool

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
)

// Condition reasons besides the API's own (pkg/apis/pvpool).
const (
	// ReasonMinimumReplicasUnavailable: the pool wants replicas but none can be checked out now.
	ReasonMinimumReplicasUnavailable = "MinimumReplicasUnavailable"
	// ReasonSettling: replicas are being created, initialized, replaced or removed.
	ReasonSettling = "Settling"
)

// Event reasons.
const (
	EventPoolScaling  = "PoolScaling"
	EventStaleReplica = "StaleReplica"
	EventInvalid      = "Invalid"
)

// availableCondition follows PVPool: a pool is Available when a checkout can be served from it now,
// that is when at least one replica is available (reason MinimumReplicasAvailable; the minimum is
// one). A pool asked for no replicas is not available (NoReplicasRequested); a pool whose replicas
// are all still being prepared or all checked out is not either (MinimumReplicasUnavailable).
// Whether the pool holds all the replicas it was asked for is the Settlement condition's business.
func availableCondition(desired, available int32) v1alpha1.PoolCondition {
	switch {
	case desired == 0:
		return v1alpha1.PoolCondition{Type: v1alpha1.PoolAvailable, Status: corev1.ConditionFalse,
			Reason: pvpool.PoolAvailableReasonNoReplicasRequested, Message: "The pool has no replicas configured."}
	case available > 0:
		return v1alpha1.PoolCondition{Type: v1alpha1.PoolAvailable, Status: corev1.ConditionTrue,
			Reason:  pvpool.PoolAvailableReasonMinimumReplicasAvailable,
			Message: fmt.Sprintf("%d of %d replicas are available to be checked out.", available, desired)}
	default:
		return v1alpha1.PoolCondition{Type: v1alpha1.PoolAvailable, Status: corev1.ConditionFalse,
			Reason: ReasonMinimumReplicasUnavailable, Message: "No replica is available to be checked out yet."}
	}
}

// settlementInput is what a reconcile learnt about how far the pool is from its steady state.
type settlementInput struct {
	desired, replicas, available int32
	// busy: this reconcile created, deleted or replaced replicas, or finished jobs of available
	// replicas are still to be removed.
	busy bool
	// invalid explains why replicas cannot be made (the template's class is missing, the API
	// server rejects the claim or job); "" if they can.
	invalid string
	// jobFailure describes the latest failed job of a pool whose replacements are backing off.
	jobFailure string
}

// settlementCondition is Settled (True) when the pool holds exactly the replicas it asked for, all
// available; Invalid (False) when its replicas cannot be made until the pool changes; InitJobFailed
// (Unknown, as in PVPool) while replicas whose jobs failed are being replaced with backoff; and
// Settling (Unknown) otherwise.
func settlementCondition(in settlementInput, previous *v1alpha1.PoolCondition) v1alpha1.PoolCondition {
	settled := !in.busy && in.replicas == in.desired && in.available == in.desired
	switch {
	case in.invalid != "":
		return v1alpha1.PoolCondition{Type: v1alpha1.PoolSettlement, Status: corev1.ConditionFalse,
			Reason: pvpool.PoolSettlementReasonInvalid, Message: "Replicas cannot be created: " + in.invalid}
	case settled:
		return v1alpha1.PoolCondition{Type: v1alpha1.PoolSettlement, Status: corev1.ConditionTrue,
			Reason: pvpool.PoolSettlementReasonSettled, Message: "All requested replicas are available to be checked out."}
	case in.jobFailure != "":
		return v1alpha1.PoolCondition{Type: v1alpha1.PoolSettlement, Status: corev1.ConditionUnknown,
			Reason: pvpool.PoolSettlementReasonInitJobFailed, Message: "A replica could not be initialized: " + in.jobFailure}
	case previous != nil && previous.Reason == pvpool.PoolSettlementReasonInitJobFailed:
		// The failure is not remembered across restarts of the controller; the condition is, until
		// the pool settles.
		return *previous
	default:
		return v1alpha1.PoolCondition{Type: v1alpha1.PoolSettlement, Status: corev1.ConditionUnknown,
			Reason:  ReasonSettling,
			Message: fmt.Sprintf("%d of %d replicas are available, %d exist.", in.available, in.desired, in.replicas)}
	}
}

func findCondition(conditions []v1alpha1.PoolCondition, conditionType v1alpha1.PoolConditionType) *v1alpha1.PoolCondition {
	for i := range conditions {
		if conditions[i].Type == conditionType {
			return &conditions[i]
		}
	}
	return nil
}

// setCondition puts next into conditions; lastTransitionTime moves only when the status changes.
func setCondition(conditions []v1alpha1.PoolCondition, next v1alpha1.PoolCondition, now metav1.Time) []v1alpha1.PoolCondition {
	previous := findCondition(conditions, next.Type)
	if previous == nil {
		next.LastTransitionTime = now
		return append(conditions, next)
	}
	if previous.Status == next.Status && !previous.LastTransitionTime.IsZero() {
		next.LastTransitionTime = previous.LastTransitionTime
	} else {
		next.LastTransitionTime = now
	}
	*previous = next
	return conditions
}

// updateStatus writes status if it differs from pool's. A conflict is returned, so the pool is
// reconciled again from a fresh copy.
func (c *Controller) updateStatus(ctx context.Context, pool *v1alpha1.Pool, status v1alpha1.PoolStatus) error {
	if apiequality.Semantic.DeepEqual(pool.Status, status) {
		return nil
	}
	updated := pool.DeepCopy()
	updated.Status = status
	_, err := c.pvpoolClient.PvpoolV1alpha1().Pools(pool.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		// Deleted meanwhile; its delete event brings the controller back.
		return nil
	}
	if err != nil {
		return fmt.Errorf("updating pool status: %w", err)
	}
	return nil
}
