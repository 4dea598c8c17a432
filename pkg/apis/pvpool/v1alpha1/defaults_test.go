package v1alpha1_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
)

// defaulted applies the defaults registered in the scheme, as the server does on decode.
func defaulted(t *testing.T, obj runtime.Object) runtime.Object {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatalf("AddToScheme: %v", err)
	}
	obj = obj.DeepCopyObject()
	scheme.Default(obj)
	return obj
}

func TestPoolDefaults(t *testing.T) {
	rwo := []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	rwx := []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}
	tests := []struct {
		name string
		in   v1alpha1.PoolSpec
		want v1alpha1.PoolSpec
	}{
		{
			name: "empty spec gets one replica and ReadWriteOnce",
			in:   v1alpha1.PoolSpec{},
			want: v1alpha1.PoolSpec{
				Replicas: ptr.To[int32](1),
				Template: v1alpha1.PersistentVolumeClaimTemplate{Spec: corev1.PersistentVolumeClaimSpec{AccessModes: rwo}},
			},
		},
		{
			name: "explicit zero replicas and access modes are kept",
			in: v1alpha1.PoolSpec{
				Replicas: ptr.To[int32](0),
				Template: v1alpha1.PersistentVolumeClaimTemplate{Spec: corev1.PersistentVolumeClaimSpec{AccessModes: rwx}},
			},
			want: v1alpha1.PoolSpec{
				Replicas: ptr.To[int32](0),
				Template: v1alpha1.PersistentVolumeClaimTemplate{Spec: corev1.PersistentVolumeClaimSpec{AccessModes: rwx}},
			},
		},
		{
			name: "init job gets the workspace volume and restartPolicy Never",
			in: v1alpha1.PoolSpec{
				Replicas: ptr.To[int32](5),
				InitJob:  &v1alpha1.MountJob{},
			},
			want: v1alpha1.PoolSpec{
				Replicas: ptr.To[int32](5),
				Template: v1alpha1.PersistentVolumeClaimTemplate{Spec: corev1.PersistentVolumeClaimSpec{AccessModes: rwo}},
				InitJob: &v1alpha1.MountJob{
					VolumeName: "workspace",
					Template: v1alpha1.JobTemplate{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
						Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever},
					}}},
				},
			},
		},
		{
			name: "explicit init job volume and restartPolicy are kept",
			in: v1alpha1.PoolSpec{
				InitJob: &v1alpha1.MountJob{
					VolumeName: "my-volume",
					Template: v1alpha1.JobTemplate{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
						Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyOnFailure},
					}}},
				},
			},
			want: v1alpha1.PoolSpec{
				Replicas: ptr.To[int32](1),
				Template: v1alpha1.PersistentVolumeClaimTemplate{Spec: corev1.PersistentVolumeClaimSpec{AccessModes: rwo}},
				InitJob: &v1alpha1.MountJob{
					VolumeName: "my-volume",
					Template: v1alpha1.JobTemplate{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
						Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyOnFailure},
					}}},
				},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := defaulted(t, &v1alpha1.Pool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: tc.in}).(*v1alpha1.Pool)
			if diff := cmp.Diff(tc.want, got.Spec); diff != "" {
				t.Errorf("defaulted spec (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPoolListDefaults(t *testing.T) {
	got := defaulted(t, &v1alpha1.PoolList{Items: []v1alpha1.Pool{{}, {Spec: v1alpha1.PoolSpec{Replicas: ptr.To[int32](3)}}}}).(*v1alpha1.PoolList)
	if r := got.Items[0].Spec.Replicas; r == nil || *r != 1 {
		t.Errorf("items[0].spec.replicas = %v, want 1", r)
	}
	if r := got.Items[1].Spec.Replicas; r == nil || *r != 3 {
		t.Errorf("items[1].spec.replicas = %v, want 3", r)
	}
}

func TestCheckoutDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   []corev1.PersistentVolumeAccessMode
		want []corev1.PersistentVolumeAccessMode
	}{
		{name: "none gets ReadWriteOnce", want: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}},
		{
			name: "explicit modes are kept",
			in:   []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany, corev1.ReadWriteMany},
			want: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany, corev1.ReadWriteMany},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := &v1alpha1.Checkout{Spec: v1alpha1.CheckoutSpec{PoolRef: v1alpha1.PoolReference{Name: "p"}, AccessModes: tc.in}}
			got := defaulted(t, in).(*v1alpha1.Checkout)
			if diff := cmp.Diff(tc.want, got.Spec.AccessModes); diff != "" {
				t.Errorf("defaulted access modes (-want +got):\n%s", diff)
			}
		})
	}
	list := defaulted(t, &v1alpha1.CheckoutList{Items: []v1alpha1.Checkout{{}}}).(*v1alpha1.CheckoutList)
	if diff := cmp.Diff([]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, list.Items[0].Spec.AccessModes); diff != "" {
		t.Errorf("list item access modes (-want +got):\n%s", diff)
	}
}
