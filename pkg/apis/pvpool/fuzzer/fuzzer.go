// Package fuzzer fills pvpool.puppet.com objects with random values that survive a round trip
// through the versioned API: every field the v1alpha1 defaulters would set on decode is already set,
// so a difference after the round trip is a conversion or serialization bug, not a default.
package fuzzer

import (
	corev1 "k8s.io/api/core/v1"
	runtimeserializer "k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/randfill"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
)

// Funcs returns the fuzzer functions of the pvpool.puppet.com API group.
var Funcs = func(codecs runtimeserializer.CodecFactory) []interface{} {
	return []interface{}{
		func(spec *pvpool.PoolSpec, c randfill.Continue) {
			c.FillNoCustom(spec)
			if spec.Replicas == nil {
				replicas := c.Int31()
				spec.Replicas = &replicas
			}
			if len(spec.Template.Spec.AccessModes) == 0 {
				spec.Template.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{randomAccessMode(c)}
			}
		},
		func(job *pvpool.MountJob, c randfill.Continue) {
			c.FillNoCustom(job)
			if job.VolumeName == "" {
				job.VolumeName = pvpool.DefaultInitJobVolumeName
			}
			if job.Template.Spec.Template.Spec.RestartPolicy == "" {
				job.Template.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyNever
			}
		},
		func(spec *pvpool.CheckoutSpec, c randfill.Continue) {
			c.FillNoCustom(spec)
			if len(spec.AccessModes) == 0 {
				spec.AccessModes = []corev1.PersistentVolumeAccessMode{randomAccessMode(c)}
			}
		},

		// The init job's pod spec is the versioned core/v1 type, so the declarative defaults of
		// k8s.io/api (+default markers) are applied to it on decode as well.
		func(port *corev1.ContainerPort, c randfill.Continue) {
			c.FillNoCustom(port)
			if port.Protocol == "" {
				port.Protocol = corev1.ProtocolTCP
			}
		},
		func(selector *corev1.FileKeySelector, c randfill.Continue) {
			c.FillNoCustom(selector)
			if selector.Optional == nil {
				selector.Optional = new(bool)
			}
		},
		func(action *corev1.GRPCAction, c randfill.Continue) {
			c.FillNoCustom(action)
			if action.Service == nil {
				action.Service = new(string)
			}
		},
		func(source *corev1.ISCSIVolumeSource, c randfill.Continue) {
			c.FillNoCustom(source)
			if source.ISCSIInterface == "" {
				source.ISCSIInterface = "default"
			}
		},
		func(source *corev1.RBDVolumeSource, c randfill.Continue) {
			c.FillNoCustom(source)
			if source.RBDPool == "" {
				source.RBDPool = "rbd"
			}
			if source.RadosUser == "" {
				source.RadosUser = "admin"
			}
			if source.Keyring == "" {
				source.Keyring = "/etc/ceph/keyring"
			}
		},
		func(source *corev1.AzureDiskVolumeSource, c randfill.Continue) {
			c.FillNoCustom(source)
			if source.CachingMode == nil {
				mode := corev1.AzureDataDiskCachingReadWrite
				source.CachingMode = &mode
			}
			if source.FSType == nil {
				fsType := "ext4"
				source.FSType = &fsType
			}
			if source.ReadOnly == nil {
				source.ReadOnly = new(bool)
			}
			if source.Kind == nil {
				kind := corev1.AzureSharedBlobDisk
				source.Kind = &kind
			}
		},
		func(source *corev1.ScaleIOVolumeSource, c randfill.Continue) {
			c.FillNoCustom(source)
			if source.StorageMode == "" {
				source.StorageMode = "ThinProvisioned"
			}
			if source.FSType == "" {
				source.FSType = "xfs"
			}
		},
	}
}

func randomAccessMode(c randfill.Continue) corev1.PersistentVolumeAccessMode {
	modes := []corev1.PersistentVolumeAccessMode{
		corev1.ReadWriteOnce, corev1.ReadOnlyMany, corev1.ReadWriteMany, corev1.ReadWriteOncePod,
	}
	return modes[c.Intn(len(modes))]
}
