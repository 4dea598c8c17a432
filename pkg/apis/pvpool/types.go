package pvpool

import (
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The core and batch types are embedded in their versioned form: an aggregated server cannot import
// Kubernetes' internal core types, and these fields are passed through to kube-apiserver unchanged.

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// Pool keeps a number of pre-provisioned volumes ready to be checked out.
type Pool struct {
	metav1.TypeMeta
	metav1.ObjectMeta

	Spec   PoolSpec
	Status PoolStatus
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// PoolList is a list of Pools.
type PoolList struct {
	metav1.TypeMeta
	metav1.ListMeta

	Items []Pool
}

type PoolSpec struct {
	// Replicas is the number of volumes the pool keeps ready.
	Replicas *int32
	// Selector matches the replica claims of this pool; it must match Template's labels.
	Selector *metav1.LabelSelector
	// Template describes the claims the pool creates.
	Template PersistentVolumeClaimTemplate
	// InitJob, when set, runs once per replica to populate it before it becomes available.
	InitJob *MountJob
}

type PersistentVolumeClaimTemplate struct {
	metav1.ObjectMeta
	Spec corev1.PersistentVolumeClaimSpec
}

// MountJob is a Job run with the replica's claim mounted as volume VolumeName.
type MountJob struct {
	Template   JobTemplate
	VolumeName string
}

type JobTemplate struct {
	metav1.ObjectMeta
	Spec batchv1.JobSpec
}

type PoolStatus struct {
	ObservedGeneration int64
	Replicas           int32
	AvailableReplicas  int32
	Conditions         []PoolCondition
}

type PoolConditionType string

const (
	// PoolAvailable tells whether the pool has the replicas it was asked for ready.
	PoolAvailable PoolConditionType = "Available"
	// PoolSettlement tells whether the pool's replicas reached a steady state.
	PoolSettlement PoolConditionType = "Settlement"
)

const (
	PoolAvailableReasonNoReplicasRequested            = "NoReplicasRequested"
	PoolAvailableReasonMinimumReplicasAvailable       = "MinimumReplicasAvailable"
	PoolSettlementReasonInvalid                       = "Invalid"
	PoolSettlementReasonInitJobFailed                 = "InitJobFailed"
	PoolSettlementReasonSettled                       = "Settled"
	DefaultInitJobVolumeName                          = "workspace"
	MaxInitJobBackoffLimit                      int32 = 10
	MaxInitJobActiveDeadlineSeconds             int64 = 600
)

type PoolCondition struct {
	Type               PoolConditionType
	Status             corev1.ConditionStatus
	LastTransitionTime metav1.Time
	Reason             string
	Message            string
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// Checkout takes one volume out of a Pool as a PersistentVolumeClaim.
type Checkout struct {
	metav1.TypeMeta
	metav1.ObjectMeta

	Spec   CheckoutSpec
	Status CheckoutStatus
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// CheckoutList is a list of Checkouts.
type CheckoutList struct {
	metav1.TypeMeta
	metav1.ListMeta

	Items []Checkout
}

type CheckoutSpec struct {
	PoolRef     PoolReference
	ClaimName   string
	AccessModes []corev1.PersistentVolumeAccessMode
}

// PoolReference names a Pool; an empty Namespace means the Checkout's own.
type PoolReference struct {
	Namespace string
	Name      string
}

type CheckoutStatus struct {
	VolumeName     string
	VolumeClaimRef corev1.LocalObjectReference
	Conditions     []CheckoutCondition
}

type CheckoutConditionType string

const (
	// CheckoutAcquired tells whether the checkout holds a volume.
	CheckoutAcquired CheckoutConditionType = "Acquired"
)

const (
	CheckoutAcquiredReasonPoolDoesNotExist = "PoolDoesNotExist"
	CheckoutAcquiredReasonNotAvailable     = "NotAvailable"
	CheckoutAcquiredReasonInvalid          = "Invalid"
	CheckoutAcquiredReasonConflict         = "Conflict"
	CheckoutAcquiredReasonCheckedOut       = "CheckedOut"
)

type CheckoutCondition struct {
	Type               CheckoutConditionType
	Status             corev1.ConditionStatus
	LastTransitionTime metav1.Time
	Reason             string
	Message            string
}
