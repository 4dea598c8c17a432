package v1alpha1

import (
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// Pool keeps a number of pre-provisioned volumes ready to be checked out.
type Pool struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec PoolSpec `json:"spec"`
	// +optional
	Status PoolStatus `json:"status,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// PoolList is a list of Pools.
type PoolList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []Pool `json:"items"`
}

// PoolSpec describes the volumes a Pool keeps ready.
type PoolSpec struct {
	// Replicas is the number of volumes the pool keeps ready. Defaults to 1.
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Selector matches the replica claims of this pool. It must match the template's labels and
	// cannot be changed.
	Selector *metav1.LabelSelector `json:"selector"`

	// Template describes the PersistentVolumeClaims the pool creates.
	Template PersistentVolumeClaimTemplate `json:"template"`

	// InitJob, when set, runs once per replica, with the replica's claim mounted, before the replica
	// becomes available.
	// +optional
	InitJob *MountJob `json:"initJob,omitempty"`
}

// PersistentVolumeClaimTemplate describes the claims a Pool creates.
type PersistentVolumeClaimTemplate struct {
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec corev1.PersistentVolumeClaimSpec `json:"spec"`
}

// MountJob is a Job run with a replica's claim added to its pod as the volume VolumeName.
type MountJob struct {
	Template JobTemplate `json:"template"`

	// VolumeName is the name of the pod volume that holds the replica's claim. Defaults to
	// "workspace".
	// +optional
	VolumeName string `json:"volumeName,omitempty"`
}

// JobTemplate describes a Job. The pod's restartPolicy is always Never, backoffLimit is at most 10
// and activeDeadlineSeconds at most 600.
type JobTemplate struct {
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec batchv1.JobSpec `json:"spec"`
}

// PoolStatus is the observed state of a Pool.
type PoolStatus struct {
	// ObservedGeneration is the most recent generation the controller acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Replicas is the number of replica claims that exist, available or not.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// AvailableReplicas is the number of replicas ready to be checked out.
	// +optional
	AvailableReplicas int32 `json:"availableReplicas,omitempty"`

	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []PoolCondition `json:"conditions,omitempty"`
}

// PoolConditionType is a kind of PoolCondition.
type PoolConditionType string

const (
	// PoolAvailable tells whether the pool has the replicas it was asked for ready.
	PoolAvailable PoolConditionType = "Available"
	// PoolSettlement tells whether the pool's replicas reached a steady state.
	PoolSettlement PoolConditionType = "Settlement"
)

// PoolCondition is one aspect of a Pool's state.
type PoolCondition struct {
	Type   PoolConditionType      `json:"type"`
	Status corev1.ConditionStatus `json:"status"`
	// +optional
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitempty"`
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
}

// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// Checkout takes one volume out of a Pool as a PersistentVolumeClaim.
type Checkout struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec CheckoutSpec `json:"spec"`
	// +optional
	Status CheckoutStatus `json:"status,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// CheckoutList is a list of Checkouts.
type CheckoutList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []Checkout `json:"items"`
}

// CheckoutSpec names the pool to take a volume from and the claim to hand it out as.
type CheckoutSpec struct {
	PoolRef PoolReference `json:"poolRef"`

	// ClaimName is the name of the PersistentVolumeClaim created in the checkout's namespace.
	// Defaults to the checkout's name.
	// +optional
	ClaimName string `json:"claimName,omitempty"`

	// AccessModes of the claim. Defaults to [ReadWriteOnce].
	// +optional
	// +listType=atomic
	AccessModes []corev1.PersistentVolumeAccessMode `json:"accessModes,omitempty"`
}

// PoolReference names a Pool.
type PoolReference struct {
	// Namespace of the pool; empty means the checkout's namespace.
	// +optional
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// CheckoutStatus is the observed state of a Checkout.
type CheckoutStatus struct {
	// VolumeName is the PersistentVolume handed out to this checkout.
	// +optional
	VolumeName string `json:"volumeName,omitempty"`

	// VolumeClaimRef is the claim, in the checkout's namespace, bound to VolumeName.
	// +optional
	VolumeClaimRef corev1.LocalObjectReference `json:"volumeClaimRef,omitempty"`

	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []CheckoutCondition `json:"conditions,omitempty"`
}

// CheckoutConditionType is a kind of CheckoutCondition.
type CheckoutConditionType string

const (
	// CheckoutAcquired tells whether the checkout holds a volume.
	CheckoutAcquired CheckoutConditionType = "Acquired"
)

// CheckoutCondition is one aspect of a Checkout's state.
type CheckoutCondition struct {
	Type   CheckoutConditionType  `json:"type"`
	Status corev1.ConditionStatus `json:"status"`
	// +optional
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitempty"`
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
}
