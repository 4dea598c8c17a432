package validation

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/install"
)

// fieldError is the part of a field.Error a client acts on: what is wrong and where.
type fieldError struct {
	Type  field.ErrorType
	Field string
}

func sortErrors(errs []fieldError) {
	sort.Slice(errs, func(i, j int) bool {
		if errs[i].Field != errs[j].Field {
			return errs[i].Field < errs[j].Field
		}
		return errs[i].Type < errs[j].Type
	})
}

// expectErrors fails unless errs are exactly want, in any order: a missing error is a rule that
// broke, an extra one a rule that rejects a valid object.
func expectErrors(t *testing.T, errs field.ErrorList, want ...fieldError) {
	t.Helper()
	got := make([]fieldError, 0, len(errs))
	for _, err := range errs {
		got = append(got, fieldError{err.Type, err.Field})
	}
	want = append([]fieldError{}, want...)
	sortErrors(got)
	sortErrors(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s\nall errors: %v", diff, errs)
	}
}

func required(path string) fieldError     { return fieldError{field.ErrorTypeRequired, path} }
func invalid(path string) fieldError      { return fieldError{field.ErrorTypeInvalid, path} }
func notSupported(path string) fieldError { return fieldError{field.ErrorTypeNotSupported, path} }
func duplicate(path string) fieldError    { return fieldError{field.ErrorTypeDuplicate, path} }
func forbidden(path string) fieldError    { return fieldError{field.ErrorTypeForbidden, path} }
func tooLong(path string) fieldError      { return fieldError{field.ErrorTypeTooLong, path} }

func validPool() *pvpool.Pool {
	return &pvpool.Pool{
		ObjectMeta: metav1.ObjectMeta{Namespace: "storage", Name: "test-pool", ResourceVersion: "1"},
		Spec: pvpool.PoolSpec{
			Replicas: ptr.To[int32](3),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "pvpool-test"}},
			Template: pvpool.PersistentVolumeClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      map[string]string{"app.kubernetes.io/name": "pvpool-test", "tier": "fast"},
					Annotations: map[string]string{"example.com/owner": "storage-team"},
				},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: ptr.To("local-path"),
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("50Mi")},
					},
				},
			},
			InitJob: &pvpool.MountJob{
				VolumeName: "workspace",
				Template: pvpool.JobTemplate{
					Spec: batchv1.JobSpec{
						BackoffLimit:          ptr.To[int32](2),
						ActiveDeadlineSeconds: ptr.To[int64](60),
						Template: corev1.PodTemplateSpec{
							Spec: corev1.PodSpec{
								RestartPolicy: corev1.RestartPolicyNever,
								Containers: []corev1.Container{{
									Name:         "init",
									Image:        "busybox:stable-musl",
									VolumeMounts: []corev1.VolumeMount{{Name: "workspace", MountPath: "/workspace"}},
								}},
							},
						},
					},
				},
			},
		},
	}
}

func validCheckout() *pvpool.Checkout {
	return &pvpool.Checkout{
		ObjectMeta: metav1.ObjectMeta{Namespace: "restricted", Name: "my-checkout", ResourceVersion: "1"},
		Spec: pvpool.CheckoutSpec{
			PoolRef:     pvpool.PoolReference{Namespace: "storage", Name: "restricted-pool"},
			ClaimName:   "my-claim",
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		},
	}
}

// readExample reads one of PVPool's README examples, which must validate unmodified.
func readExample(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "artifacts", "examples", "pvpool", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// decodeInternal decodes YAML of the versioned API into the internal type, with defaults applied, as
// the server does before validating.
func decodeInternal(t *testing.T, data string) runtime.Object {
	t.Helper()
	scheme := runtime.NewScheme()
	install.Install(scheme)
	codecs := serializer.NewCodecFactory(scheme, serializer.EnableStrict)
	obj, _, err := codecs.UniversalDecoder(pvpool.SchemeGroupVersion).Decode([]byte(data), nil, nil)
	if err != nil {
		t.Fatalf("decoding: %v", err)
	}
	return obj
}

func TestReadmeExamplesAreValid(t *testing.T) {
	pool, ok := decodeInternal(t, readExample(t, "pool-with-init-job.yaml")).(*pvpool.Pool)
	if !ok {
		t.Fatalf("README pool decoded as %T", pool)
	}
	// The server fills in the namespace of the request before validating.
	pool.Namespace = "default"
	expectErrors(t, ValidatePool(pool))
	if pool.Spec.InitJob == nil || pool.Spec.InitJob.VolumeName != "my-volume" || *pool.Spec.Replicas != 5 {
		t.Errorf("README pool decoded wrongly: %+v", pool.Spec)
	}

	checkout, ok := decodeInternal(t, readExample(t, "checkout-across-namespaces.yaml")).(*pvpool.Checkout)
	if !ok {
		t.Fatalf("README checkout decoded as %T", checkout)
	}
	expectErrors(t, ValidateCheckout(checkout))
	if checkout.Spec.PoolRef != (pvpool.PoolReference{Namespace: "storage", Name: "restricted-pool"}) {
		t.Errorf("README checkout decoded wrongly: %+v", checkout.Spec)
	}
}

func TestValidatePool(t *testing.T) {
	const (
		claimSpec = "spec.template.spec"
		jobSpec   = "spec.initJob.template.spec"
		podSpec   = "spec.initJob.template.spec.template.spec"
	)
	tests := []struct {
		name   string
		mutate func(*pvpool.Pool)
		want   []fieldError
		// metadataOnly cases test ObjectMeta rules, which differ on update.
		metadataOnly bool
	}{
		{name: "valid", mutate: func(p *pvpool.Pool) {}},
		{name: "valid without init job", mutate: func(p *pvpool.Pool) { p.Spec.InitJob = nil }},
		{name: "invalid name", mutate: func(p *pvpool.Pool) { p.Name = "Not_A_Name" }, want: []fieldError{invalid("metadata.name")}, metadataOnly: true},
		{name: "missing namespace", mutate: func(p *pvpool.Pool) { p.Namespace = "" }, want: []fieldError{required("metadata.namespace")}, metadataOnly: true},

		// replicas
		{name: "replicas missing", mutate: func(p *pvpool.Pool) { p.Spec.Replicas = nil }, want: []fieldError{required("spec.replicas")}},
		{name: "replicas negative", mutate: func(p *pvpool.Pool) { p.Spec.Replicas = ptr.To[int32](-1) }, want: []fieldError{invalid("spec.replicas")}},
		{name: "replicas zero", mutate: func(p *pvpool.Pool) { p.Spec.Replicas = ptr.To[int32](0) }},

		// selector
		{name: "selector missing", mutate: func(p *pvpool.Pool) { p.Spec.Selector = nil }, want: []fieldError{required("spec.selector")}},
		{
			name:   "selector empty",
			mutate: func(p *pvpool.Pool) { p.Spec.Selector = &metav1.LabelSelector{} },
			want:   []fieldError{invalid("spec.selector")},
		},
		{
			name: "selector with an invalid label key",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"bad key": "x"}}
			},
			want: []fieldError{invalid("spec.selector.matchLabels")},
		},
		{
			name: "selector with an invalid label value",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "bad value"}}
			},
			want: []fieldError{invalid("spec.selector.matchLabels")},
		},
		{
			name: "selector with an invalid operator",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: "Near", Values: []string{"fast"}},
				}}
			},
			want: []fieldError{invalid("spec.selector.matchExpressions[0].operator")},
		},
		{
			name: "selector In without values",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpIn},
				}}
			},
			want: []fieldError{required("spec.selector.matchExpressions[0].values")},
		},
		{
			name: "selector by expression matching the template",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"fast", "slow"}},
				}}
			},
		},
		{
			name: "selector not matching the template labels",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "other"}}
			},
			want: []fieldError{invalid("spec.template.metadata.labels")},
		},
		{
			name:   "template without labels",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Labels = nil },
			want:   []fieldError{invalid("spec.template.metadata.labels")},
		},
		{
			name: "selector expression excluding the template",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector.MatchExpressions = []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"fast"}},
				}
			},
			want: []fieldError{invalid("spec.template.metadata.labels")},
		},

		// template metadata
		{
			name:   "template label key invalid",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Labels["-bad"] = "x" },
			want:   []fieldError{invalid("spec.template.metadata.labels")},
		},
		{
			name:   "template label value invalid",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Labels["tier"] = "not valid" },
			want:   []fieldError{invalid("spec.template.metadata.labels")},
		},
		{
			name:   "template annotation key invalid",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Annotations["bad key"] = "x" },
			want:   []fieldError{invalid("spec.template.metadata.annotations")},
		},
		{
			name:   "template annotations too long",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Annotations["big"] = strings.Repeat("x", 256*1024) },
			want:   []fieldError{tooLong("spec.template.metadata.annotations")},
		},

		// claim spec
		{
			name:   "access modes missing",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.AccessModes = nil },
			want:   []fieldError{required(claimSpec + ".accessModes")},
		},
		{
			name: "access mode unsupported",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Template.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce, "ReadSometimes"}
			},
			want: []fieldError{notSupported(claimSpec + ".accessModes[1]")},
		},
		{
			name: "access mode duplicated",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Template.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany, corev1.ReadWriteMany, corev1.ReadOnlyMany}
			},
			want: []fieldError{duplicate(claimSpec + ".accessModes[2]")},
		},
		{
			name: "ReadWriteOncePod with another mode",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Template.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod, corev1.ReadWriteOnce}
			},
			want: []fieldError{forbidden(claimSpec + ".accessModes")},
		},
		{
			name: "ReadWriteOncePod alone",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Template.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}
			},
		},
		{
			name: "all other modes together",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Template.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce, corev1.ReadOnlyMany, corev1.ReadWriteMany}
			},
		},
		{
			name:   "volume mode Block",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.VolumeMode = ptr.To(corev1.PersistentVolumeBlock) },
		},
		{
			name:   "volume mode Filesystem",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.VolumeMode = ptr.To(corev1.PersistentVolumeFilesystem) },
		},
		{
			name:   "volume mode unsupported",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.VolumeMode = ptr.To(corev1.PersistentVolumeMode("Tape")) },
			want:   []fieldError{notSupported(claimSpec + ".volumeMode")},
		},
		{
			name:   "storage request missing",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.Resources.Requests = nil },
			want:   []fieldError{required(claimSpec + ".resources.requests[storage]")},
		},
		{
			name: "storage request zero",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Template.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("0")
			},
			want: []fieldError{invalid(claimSpec + ".resources.requests[storage]")},
		},
		{
			name: "storage request negative",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Template.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("-1Gi")
			},
			want: []fieldError{invalid(claimSpec + ".resources.requests[storage]")},
		},
		{
			name:   "storage class name invalid",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.StorageClassName = ptr.To("Local_Path") },
			want:   []fieldError{invalid(claimSpec + ".storageClassName")},
		},
		{
			name:   "storage class name empty means no class",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.StorageClassName = ptr.To("") },
		},
		{
			name:   "storage class name unset",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.StorageClassName = nil },
		},
		{
			name:   "volume name forbidden",
			mutate: func(p *pvpool.Pool) { p.Spec.Template.Spec.VolumeName = "pv-1" },
			want:   []fieldError{forbidden(claimSpec + ".volumeName")},
		},

		// init job
		{
			name:   "init volume name missing",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.VolumeName = "" },
			want:   []fieldError{required("spec.initJob.volumeName")},
		},
		{
			name:   "init volume name not a DNS label",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.VolumeName = "my.volume" },
			want:   []fieldError{invalid("spec.initJob.volumeName")},
		},
		{
			name:   "init job template label invalid",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Labels = map[string]string{"bad key": "x"} },
			want:   []fieldError{invalid("spec.initJob.template.metadata.labels")},
		},
		{
			name:   "init job template annotation invalid",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Annotations = map[string]string{"bad key": "x"} },
			want:   []fieldError{invalid("spec.initJob.template.metadata.annotations")},
		},
		{
			name: "init pod template label invalid",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Labels = map[string]string{"app": "bad value"}
			},
			want: []fieldError{invalid(jobSpec + ".template.metadata.labels")},
		},
		{
			name: "init pod template annotation invalid",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Annotations = map[string]string{"bad key": "x"}
			},
			want: []fieldError{invalid(jobSpec + ".template.metadata.annotations")},
		},
		{name: "backoffLimit unset", mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.BackoffLimit = nil }},
		{name: "backoffLimit 0", mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.BackoffLimit = ptr.To[int32](0) }},
		{name: "backoffLimit 10", mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.BackoffLimit = ptr.To[int32](10) }},
		{
			name:   "backoffLimit 11",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.BackoffLimit = ptr.To[int32](11) },
			want:   []fieldError{invalid(jobSpec + ".backoffLimit")},
		},
		{
			name:   "backoffLimit negative",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.BackoffLimit = ptr.To[int32](-1) },
			want:   []fieldError{invalid(jobSpec + ".backoffLimit")},
		},
		{name: "activeDeadlineSeconds unset", mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.ActiveDeadlineSeconds = nil }},
		{name: "activeDeadlineSeconds 1", mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.ActiveDeadlineSeconds = ptr.To[int64](1) }},
		{name: "activeDeadlineSeconds 600", mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.ActiveDeadlineSeconds = ptr.To[int64](600) }},
		{
			name:   "activeDeadlineSeconds 0",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.ActiveDeadlineSeconds = ptr.To[int64](0) },
			want:   []fieldError{invalid(jobSpec + ".activeDeadlineSeconds")},
		},
		{
			name:   "activeDeadlineSeconds 601",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.ActiveDeadlineSeconds = ptr.To[int64](601) },
			want:   []fieldError{invalid(jobSpec + ".activeDeadlineSeconds")},
		},
		{
			name: "job selector forbidden",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}}
			},
			want: []fieldError{forbidden(jobSpec + ".selector")},
		},
		{
			name:   "manualSelector forbidden",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.ManualSelector = ptr.To(false) },
			want:   []fieldError{forbidden(jobSpec + ".selector")},
		},
		{name: "restartPolicy empty", mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.Template.Spec.RestartPolicy = "" }},
		{
			name: "restartPolicy OnFailure",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
			},
			want: []fieldError{notSupported(podSpec + ".restartPolicy")},
		},
		{
			name: "restartPolicy Always",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyAlways
			},
			want: []fieldError{notSupported(podSpec + ".restartPolicy")},
		},
		{
			name:   "containers missing",
			mutate: func(p *pvpool.Pool) { p.Spec.InitJob.Template.Spec.Template.Spec.Containers = nil },
			want:   []fieldError{required(podSpec + ".containers")},
		},
		{
			name: "container name and image missing",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Spec.Containers = append(p.Spec.InitJob.Template.Spec.Template.Spec.Containers,
					corev1.Container{Image: "busybox"}, corev1.Container{Name: "second"})
			},
			want: []fieldError{required(podSpec + ".containers[1].name"), required(podSpec + ".containers[2].image")},
		},
		{
			name: "init volume declared as a claim",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Spec.Volumes = []corev1.Volume{{
					Name:         "workspace",
					VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "x"}},
				}}
			},
		},
		{
			name: "init volume declared with another source",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Spec.Volumes = []corev1.Volume{
					{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				}
			},
			want: []fieldError{invalid(podSpec + ".volumes[1]")},
		},
		{
			name: "init volume declared as a claim and another source",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Spec.Volumes = []corev1.Volume{{
					Name: "workspace",
					VolumeSource: corev1.VolumeSource{
						PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "x"},
						HostPath:              &corev1.HostPathVolumeSource{Path: "/tmp"},
					},
				}}
			},
			want: []fieldError{invalid(podSpec + ".volumes[0]")},
		},
		{
			name: "other volumes may have any source",
			mutate: func(p *pvpool.Pool) {
				p.Spec.InitJob.Template.Spec.Template.Spec.Volumes = []corev1.Volume{
					{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				}
			},
		},
		{
			name: "errors from several rules are all reported",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Replicas = ptr.To[int32](-5)
				p.Spec.Template.Spec.VolumeName = "pv"
				p.Spec.InitJob.Template.Spec.BackoffLimit = ptr.To[int32](100)
			},
			want: []fieldError{invalid("spec.replicas"), forbidden(claimSpec + ".volumeName"), invalid(jobSpec + ".backoffLimit")},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := validPool()
			tc.mutate(pool)
			expectErrors(t, ValidatePool(pool), tc.want...)

			if tc.metadataOnly {
				return
			}
			// Every rule of the spec applies on update too; the selector is kept so that its
			// immutability does not add an error.
			old := validPool()
			old.Spec.Selector = pool.Spec.Selector.DeepCopy()
			expectErrors(t, ValidatePoolUpdate(pool, old), tc.want...)
		})
	}
}

func TestValidatePoolUpdate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*pvpool.Pool)
		want   []fieldError
	}{
		{name: "unchanged", mutate: func(p *pvpool.Pool) {}},
		{name: "replicas changed", mutate: func(p *pvpool.Pool) { p.Spec.Replicas = ptr.To[int32](10) }},
		{name: "template changed", mutate: func(p *pvpool.Pool) {
			p.Spec.Template.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("1Gi")
			p.Spec.Template.Labels["extra"] = "label"
		}},
		{name: "init job removed", mutate: func(p *pvpool.Pool) { p.Spec.InitJob = nil }},
		{name: "labels changed", mutate: func(p *pvpool.Pool) { p.Labels = map[string]string{"team": "storage"} }},
		{
			name: "selector label changed",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector.MatchLabels = map[string]string{"tier": "fast"}
			},
			want: []fieldError{invalid("spec.selector")},
		},
		{
			name: "selector expression added",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Selector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpExists}}
			},
			want: []fieldError{invalid("spec.selector")},
		},
		{
			name:   "selector removed",
			mutate: func(p *pvpool.Pool) { p.Spec.Selector = nil },
			want:   []fieldError{required("spec.selector"), invalid("spec.selector")},
		},
		{
			name:   "name changed",
			mutate: func(p *pvpool.Pool) { p.Name = "other" },
			want:   []fieldError{invalid("metadata.name")},
		},
		{
			name:   "resourceVersion missing",
			mutate: func(p *pvpool.Pool) { p.ResourceVersion = "" },
			want:   []fieldError{invalid("metadata.resourceVersion")},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old, pool := validPool(), validPool()
			tc.mutate(pool)
			expectErrors(t, ValidatePoolUpdate(pool, old), tc.want...)
		})
	}
}

func TestValidatePoolStatusUpdate(t *testing.T) {
	now := metav1.Now()
	tests := []struct {
		name   string
		status pvpool.PoolStatus
		mutate func(*pvpool.Pool)
		want   []fieldError
	}{
		{name: "empty"},
		{
			name: "settled and available",
			status: pvpool.PoolStatus{
				ObservedGeneration: 2, Replicas: 3, AvailableReplicas: 3,
				Conditions: []pvpool.PoolCondition{
					{Type: pvpool.PoolAvailable, Status: corev1.ConditionTrue, LastTransitionTime: now, Reason: pvpool.PoolAvailableReasonMinimumReplicasAvailable},
					{Type: pvpool.PoolSettlement, Status: corev1.ConditionTrue, LastTransitionTime: now, Reason: pvpool.PoolSettlementReasonSettled, Message: "all replicas settled"},
				},
			},
		},
		{
			name: "every reason and status",
			status: pvpool.PoolStatus{Conditions: []pvpool.PoolCondition{
				{Type: pvpool.PoolAvailable, Status: corev1.ConditionFalse, Reason: pvpool.PoolAvailableReasonNoReplicasRequested},
				{Type: pvpool.PoolSettlement, Status: corev1.ConditionUnknown, Reason: pvpool.PoolSettlementReasonInitJobFailed},
			}},
		},
		{
			name:   "settlement invalid without a reason",
			status: pvpool.PoolStatus{Conditions: []pvpool.PoolCondition{{Type: pvpool.PoolSettlement, Status: corev1.ConditionFalse}}},
		},
		{
			name:   "observedGeneration negative",
			status: pvpool.PoolStatus{ObservedGeneration: -1},
			want:   []fieldError{invalid("status.observedGeneration")},
		},
		{
			name:   "replicas negative",
			status: pvpool.PoolStatus{Replicas: -1, AvailableReplicas: -2},
			want:   []fieldError{invalid("status.replicas"), invalid("status.availableReplicas")},
		},
		{
			name:   "availableReplicas negative",
			status: pvpool.PoolStatus{Replicas: 1, AvailableReplicas: -1},
			want:   []fieldError{invalid("status.availableReplicas")},
		},
		{
			name:   "more available than existing",
			status: pvpool.PoolStatus{Replicas: 2, AvailableReplicas: 3},
			want:   []fieldError{invalid("status.availableReplicas")},
		},
		{
			name:   "unknown condition type",
			status: pvpool.PoolStatus{Conditions: []pvpool.PoolCondition{{Type: "Ready", Status: corev1.ConditionTrue}}},
			want:   []fieldError{notSupported("status.conditions[0].type")},
		},
		{
			name: "duplicate condition type",
			status: pvpool.PoolStatus{Conditions: []pvpool.PoolCondition{
				{Type: pvpool.PoolAvailable, Status: corev1.ConditionTrue},
				{Type: pvpool.PoolSettlement, Status: corev1.ConditionTrue},
				{Type: pvpool.PoolAvailable, Status: corev1.ConditionFalse},
			}},
			want: []fieldError{duplicate("status.conditions[2].type")},
		},
		{
			name:   "condition status unsupported",
			status: pvpool.PoolStatus{Conditions: []pvpool.PoolCondition{{Type: pvpool.PoolAvailable, Status: "Maybe"}}},
			want:   []fieldError{notSupported("status.conditions[0].status")},
		},
		{
			name:   "condition status missing",
			status: pvpool.PoolStatus{Conditions: []pvpool.PoolCondition{{Type: pvpool.PoolAvailable}}},
			want:   []fieldError{notSupported("status.conditions[0].status")},
		},
		{
			name: "condition reason invalid",
			status: pvpool.PoolStatus{Conditions: []pvpool.PoolCondition{
				{Type: pvpool.PoolSettlement, Status: corev1.ConditionTrue, Reason: "Settled"},
				{Type: pvpool.PoolAvailable, Status: corev1.ConditionTrue, Reason: "not a reason"},
			}},
			want: []fieldError{invalid("status.conditions[1].reason")},
		},
		{
			name:   "metadata name changed",
			mutate: func(p *pvpool.Pool) { p.Name = "other" },
			want:   []fieldError{invalid("metadata.name")},
		},
		{
			// The status strategy restores the spec before validation; the status rules are the
			// only ones that apply.
			name:   "spec is not validated",
			mutate: func(p *pvpool.Pool) { p.Spec.Replicas = nil },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old, pool := validPool(), validPool()
			pool.Status = tc.status
			if tc.mutate != nil {
				tc.mutate(pool)
			}
			expectErrors(t, ValidatePoolStatusUpdate(pool, old), tc.want...)
		})
	}
}

func TestValidateCheckout(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*pvpool.Checkout)
		want   []fieldError
	}{
		{name: "valid", mutate: func(c *pvpool.Checkout) {}},
		{
			name: "minimal: pool in the checkout's namespace, claim named after the checkout",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.PoolRef.Namespace = ""
				c.Spec.ClaimName = ""
			},
		},
		{name: "pool name with dots", mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Name = "pool.v2" }},
		{name: "invalid name", mutate: func(c *pvpool.Checkout) { c.Name = "-x" }, want: []fieldError{invalid("metadata.name")}},
		{name: "missing namespace", mutate: func(c *pvpool.Checkout) { c.Namespace = "" }, want: []fieldError{required("metadata.namespace")}},
		{
			name:   "pool name missing",
			mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Name = "" },
			want:   []fieldError{required("spec.poolRef.name")},
		},
		{
			name:   "pool name not a DNS subdomain",
			mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Name = "Restricted_Pool" },
			want:   []fieldError{invalid("spec.poolRef.name")},
		},
		{
			name:   "pool name too long",
			mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Name = strings.Repeat("a", 254) },
			want:   []fieldError{invalid("spec.poolRef.name")},
		},
		{
			name:   "pool namespace not a DNS label",
			mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Namespace = "storage.team" },
			want:   []fieldError{invalid("spec.poolRef.namespace")},
		},
		{
			name:   "pool namespace uppercase",
			mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Namespace = "Storage" },
			want:   []fieldError{invalid("spec.poolRef.namespace")},
		},
		{
			name:   "claim name invalid",
			mutate: func(c *pvpool.Checkout) { c.Spec.ClaimName = "My Claim" },
			want:   []fieldError{invalid("spec.claimName")},
		},
		{name: "claim name with dots", mutate: func(c *pvpool.Checkout) { c.Spec.ClaimName = "claim.v1" }},
		{
			name:   "access modes missing",
			mutate: func(c *pvpool.Checkout) { c.Spec.AccessModes = nil },
			want:   []fieldError{required("spec.accessModes")},
		},
		{
			name:   "access mode unsupported",
			mutate: func(c *pvpool.Checkout) { c.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{"WriteOnly"} },
			want:   []fieldError{notSupported("spec.accessModes[0]")},
		},
		{
			name: "access mode duplicated",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce, corev1.ReadWriteOnce}
			},
			want: []fieldError{duplicate("spec.accessModes[1]")},
		},
		{
			name: "ReadWriteOncePod with another mode",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany, corev1.ReadWriteOncePod}
			},
			want: []fieldError{forbidden("spec.accessModes")},
		},
		{
			name: "ReadOnlyMany",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}
			},
		},
		{
			name: "ReadWriteOncePod alone",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkout := validCheckout()
			tc.mutate(checkout)
			expectErrors(t, ValidateCheckout(checkout), tc.want...)
		})
	}
}

func TestValidateCheckoutUpdate(t *testing.T) {
	changes := []struct {
		name   string
		mutate func(*pvpool.Checkout)
		// field is where the change is reported once a volume is held; empty for changes that
		// are always allowed.
		field string
	}{
		{name: "labels", mutate: func(c *pvpool.Checkout) { c.Labels = map[string]string{"a": "b"} }},
		{name: "annotations", mutate: func(c *pvpool.Checkout) { c.Annotations = map[string]string{"a": "b"} }},
		{name: "pool name", mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Name = "other-pool" }, field: "spec.poolRef"},
		{name: "pool namespace", mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Namespace = "other" }, field: "spec.poolRef"},
		{name: "pool namespace cleared", mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Namespace = "" }, field: "spec.poolRef"},
		{name: "claim name", mutate: func(c *pvpool.Checkout) { c.Spec.ClaimName = "other-claim" }, field: "spec.claimName"},
		{name: "claim name cleared", mutate: func(c *pvpool.Checkout) { c.Spec.ClaimName = "" }, field: "spec.claimName"},
		{
			name: "access modes",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}
			},
			field: "spec.accessModes",
		},
		{
			name: "access mode added",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.AccessModes = append(c.Spec.AccessModes, corev1.ReadOnlyMany)
			},
			field: "spec.accessModes",
		},
	}
	for _, tc := range changes {
		t.Run(tc.name+" before a volume is held", func(t *testing.T) {
			old, checkout := validCheckout(), validCheckout()
			tc.mutate(checkout)
			expectErrors(t, ValidateCheckoutUpdate(checkout, old))
		})
		t.Run(tc.name+" while a volume is held", func(t *testing.T) {
			old, checkout := validCheckout(), validCheckout()
			old.Status.VolumeName = "pvc-1234"
			checkout.Status.VolumeName = "pvc-1234"
			tc.mutate(checkout)
			var want []fieldError
			if tc.field != "" {
				want = append(want, invalid(tc.field))
			}
			expectErrors(t, ValidateCheckoutUpdate(checkout, old), want...)
		})
	}

	t.Run("every immutable field changed at once", func(t *testing.T) {
		old, checkout := validCheckout(), validCheckout()
		old.Status.VolumeName = "pvc-1234"
		checkout.Spec = pvpool.CheckoutSpec{
			PoolRef:     pvpool.PoolReference{Name: "p2"},
			ClaimName:   "c2",
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
		}
		expectErrors(t, ValidateCheckoutUpdate(checkout, old),
			invalid("spec.poolRef"), invalid("spec.claimName"), invalid("spec.accessModes"))
	})
	t.Run("spec rules apply on update", func(t *testing.T) {
		old, checkout := validCheckout(), validCheckout()
		checkout.Spec.PoolRef.Name = ""
		checkout.Spec.AccessModes = nil
		expectErrors(t, ValidateCheckoutUpdate(checkout, old), required("spec.poolRef.name"), required("spec.accessModes"))
	})
	t.Run("metadata rules apply on update", func(t *testing.T) {
		old, checkout := validCheckout(), validCheckout()
		checkout.Namespace = "elsewhere"
		expectErrors(t, ValidateCheckoutUpdate(checkout, old), invalid("metadata.namespace"))
	})
}

func TestValidateCheckoutStatusUpdate(t *testing.T) {
	tests := []struct {
		name   string
		status pvpool.CheckoutStatus
		mutate func(*pvpool.Checkout)
		want   []fieldError
	}{
		{name: "empty"},
		{
			name: "checked out",
			status: pvpool.CheckoutStatus{
				VolumeName:     "pvc-0b1c7f2e-6a4d-4e55-9d3c-0a6e1f0f4b21",
				VolumeClaimRef: corev1.LocalObjectReference{Name: "my-claim"},
				Conditions: []pvpool.CheckoutCondition{{
					Type: pvpool.CheckoutAcquired, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(),
					Reason: pvpool.CheckoutAcquiredReasonCheckedOut, Message: "volume acquired",
				}},
			},
		},
		{
			name: "waiting",
			status: pvpool.CheckoutStatus{Conditions: []pvpool.CheckoutCondition{
				{Type: pvpool.CheckoutAcquired, Status: corev1.ConditionUnknown, Reason: pvpool.CheckoutAcquiredReasonNotAvailable},
			}},
		},
		{
			name:   "volume name invalid",
			status: pvpool.CheckoutStatus{VolumeName: "PV_1"},
			want:   []fieldError{invalid("status.volumeName")},
		},
		{
			name:   "claim name invalid",
			status: pvpool.CheckoutStatus{VolumeClaimRef: corev1.LocalObjectReference{Name: "claim/1"}},
			want:   []fieldError{invalid("status.volumeClaimRef.name")},
		},
		{
			name:   "unknown condition type",
			status: pvpool.CheckoutStatus{Conditions: []pvpool.CheckoutCondition{{Type: "Available", Status: corev1.ConditionTrue}}},
			want:   []fieldError{notSupported("status.conditions[0].type")},
		},
		{
			name: "duplicate condition type",
			status: pvpool.CheckoutStatus{Conditions: []pvpool.CheckoutCondition{
				{Type: pvpool.CheckoutAcquired, Status: corev1.ConditionTrue},
				{Type: pvpool.CheckoutAcquired, Status: corev1.ConditionFalse},
			}},
			want: []fieldError{duplicate("status.conditions[1].type")},
		},
		{
			name:   "condition status unsupported",
			status: pvpool.CheckoutStatus{Conditions: []pvpool.CheckoutCondition{{Type: pvpool.CheckoutAcquired, Status: "Yes"}}},
			want:   []fieldError{notSupported("status.conditions[0].status")},
		},
		{
			name: "condition reason invalid",
			status: pvpool.CheckoutStatus{Conditions: []pvpool.CheckoutCondition{
				{Type: pvpool.CheckoutAcquired, Status: corev1.ConditionFalse, Reason: "Pool does not exist"},
			}},
			want: []fieldError{invalid("status.conditions[0].reason")},
		},
		{
			name:   "metadata namespace changed",
			mutate: func(c *pvpool.Checkout) { c.Namespace = "elsewhere" },
			want:   []fieldError{invalid("metadata.namespace")},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old, checkout := validCheckout(), validCheckout()
			checkout.Status = tc.status
			if tc.mutate != nil {
				tc.mutate(checkout)
			}
			expectErrors(t, ValidateCheckoutStatusUpdate(checkout, old), tc.want...)
		})
	}
}
