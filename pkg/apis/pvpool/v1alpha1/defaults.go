package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// DefaultInitJobVolumeName is the pod volume an init job's claim is mounted as when none is named.
const DefaultInitJobVolumeName = "workspace"

func addDefaultingFuncs(scheme *runtime.Scheme) error {
	return RegisterDefaults(scheme)
}

// SetDefaults_PoolSpec defaults replicas to 1 and the claim template's access modes to
// ReadWriteOnce: PVPool's examples omit them, and kube-apiserver rejects a claim without one.
func SetDefaults_PoolSpec(obj *PoolSpec) {
	if obj.Replicas == nil {
		one := int32(1)
		obj.Replicas = &one
	}
	if len(obj.Template.Spec.AccessModes) == 0 {
		obj.Template.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
}

// SetDefaults_MountJob names the volume and makes the pod never restart in place: a failed init job
// must fail the Job so the replica is replaced instead of retried on a half-written volume.
func SetDefaults_MountJob(obj *MountJob) {
	if obj.VolumeName == "" {
		obj.VolumeName = DefaultInitJobVolumeName
	}
	if obj.Template.Spec.Template.Spec.RestartPolicy == "" {
		obj.Template.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyNever
	}
}

// SetDefaults_CheckoutSpec defaults the access modes to ReadWriteOnce, as PVPool does.
func SetDefaults_CheckoutSpec(obj *CheckoutSpec) {
	if len(obj.AccessModes) == 0 {
		obj.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
}
