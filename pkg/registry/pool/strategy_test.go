package pool

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/install"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
)

func newTestStrategy(t *testing.T) Strategy {
	t.Helper()
	scheme := runtime.NewScheme()
	install.Install(scheme)
	return NewStrategy(scheme)
}

func testPool() *pvpool.Pool {
	return &pvpool.Pool{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "storage", Name: "pool-a", ResourceVersion: "7", Generation: 3,
			Labels:      map[string]string{"team": "storage"},
			Annotations: map[string]string{"example.com/note": "fast disks"},
		},
		Spec: pvpool.PoolSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
			Template: pvpool.PersistentVolumeClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "a"}},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
					},
				},
			},
		},
		Status: pvpool.PoolStatus{
			ObservedGeneration: 3, Replicas: 2, AvailableReplicas: 1,
			Conditions: []pvpool.PoolCondition{{Type: pvpool.PoolAvailable, Status: corev1.ConditionFalse}},
		},
	}
}

func TestPrepareForCreate(t *testing.T) {
	strategy := newTestStrategy(t)
	pool := testPool()
	pool.Generation = 42
	strategy.PrepareForCreate(context.Background(), pool)

	if diff := cmp.Diff(pvpool.PoolStatus{}, pool.Status); diff != "" {
		t.Errorf("status not cleared on create (-want +got):\n%s", diff)
	}
	if pool.Generation != 1 {
		t.Errorf("generation = %d, want 1", pool.Generation)
	}
	if diff := cmp.Diff(testPool().Spec, pool.Spec); diff != "" {
		t.Errorf("spec changed on create (-want +got):\n%s", diff)
	}
}

func TestPrepareForUpdate(t *testing.T) {
	tests := []struct {
		name           string
		mutate         func(*pvpool.Pool)
		wantGeneration int64
	}{
		{name: "nothing changed", mutate: func(p *pvpool.Pool) {}, wantGeneration: 3},
		{name: "labels changed", mutate: func(p *pvpool.Pool) { p.Labels = map[string]string{"team": "other"} }, wantGeneration: 3},
		{name: "annotations changed", mutate: func(p *pvpool.Pool) { p.Annotations = nil }, wantGeneration: 3},
		{
			name: "status changed",
			mutate: func(p *pvpool.Pool) {
				p.Status.AvailableReplicas = 2
				p.Status.Conditions = nil
			},
			wantGeneration: 3,
		},
		{name: "replicas changed", mutate: func(p *pvpool.Pool) { p.Spec.Replicas = ptr.To[int32](5) }, wantGeneration: 4},
		{
			name: "template changed",
			mutate: func(p *pvpool.Pool) {
				p.Spec.Template.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("2Gi")
			},
			wantGeneration: 4,
		},
		{name: "init job added", mutate: func(p *pvpool.Pool) { p.Spec.InitJob = &pvpool.MountJob{VolumeName: "workspace"} }, wantGeneration: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			strategy := newTestStrategy(t)
			old, pool := testPool(), testPool()
			tc.mutate(pool)
			want := pool.DeepCopy()
			strategy.PrepareForUpdate(context.Background(), pool, old)

			if pool.Generation != tc.wantGeneration {
				t.Errorf("generation = %d, want %d", pool.Generation, tc.wantGeneration)
			}
			if diff := cmp.Diff(old.Status, pool.Status); diff != "" {
				t.Errorf("status is not the stored one (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want.Spec, pool.Spec); diff != "" {
				t.Errorf("spec update lost (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want.Labels, pool.Labels); diff != "" {
				t.Errorf("labels update lost (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want.Annotations, pool.Annotations); diff != "" {
				t.Errorf("annotations update lost (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStatusPrepareForUpdate(t *testing.T) {
	strategy := NewStatusStrategy(newTestStrategy(t))
	old, pool := testPool(), testPool()
	pool.Spec.Replicas = ptr.To[int32](9)
	pool.Spec.Selector = nil
	pool.Labels = map[string]string{"sneaky": "label"}
	pool.Annotations = map[string]string{"sneaky": "annotation"}
	pool.Status = pvpool.PoolStatus{
		ObservedGeneration: 3, Replicas: 2, AvailableReplicas: 2,
		Conditions: []pvpool.PoolCondition{{Type: pvpool.PoolAvailable, Status: corev1.ConditionTrue, Reason: pvpool.PoolAvailableReasonMinimumReplicasAvailable}},
	}
	wantStatus := pool.Status.DeepCopy()

	strategy.PrepareForUpdate(context.Background(), pool, old)

	if diff := cmp.Diff(old.Spec, pool.Spec); diff != "" {
		t.Errorf("status update changed the spec (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(old.Labels, pool.Labels); diff != "" {
		t.Errorf("status update changed the labels (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(old.Annotations, pool.Annotations); diff != "" {
		t.Errorf("status update changed the annotations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(*wantStatus, pool.Status); diff != "" {
		t.Errorf("status update lost (-want +got):\n%s", diff)
	}
	if pool.Generation != old.Generation {
		t.Errorf("generation = %d, want %d", pool.Generation, old.Generation)
	}
}

// TestThroughGenericRegistry runs the strategies the way the generic registry Store does, so that
// generation handling and 422 errors are checked as clients see them.
func TestThroughGenericRegistry(t *testing.T) {
	strategy := newTestStrategy(t)
	ctx := genericapirequest.WithNamespace(context.Background(), "storage")

	pool := testPool()
	rest.FillObjectMetaSystemFields(pool)
	if err := rest.BeforeCreate(strategy, ctx, pool); err != nil {
		t.Fatalf("create: %v", err)
	}
	if pool.Generation != 1 || pool.Status.Replicas != 0 {
		t.Errorf("after create: generation %d, status %+v", pool.Generation, pool.Status)
	}

	updated := pool.DeepCopy()
	updated.Generation = 100 // clients cannot set the generation
	updated.Spec.Replicas = ptr.To[int32](4)
	if err := rest.BeforeUpdate(strategy, ctx, updated, pool); err != nil {
		t.Fatalf("update: %v", err)
	}
	if updated.Generation != 2 {
		t.Errorf("generation after a spec update = %d, want 2", updated.Generation)
	}

	relabelled := updated.DeepCopy()
	relabelled.Labels = map[string]string{"x": "y"}
	if err := rest.BeforeUpdate(strategy, ctx, relabelled, updated); err != nil {
		t.Fatalf("relabel: %v", err)
	}
	if relabelled.Generation != 2 {
		t.Errorf("generation after a label update = %d, want 2", relabelled.Generation)
	}

	withStatus := relabelled.DeepCopy()
	withStatus.Status = pvpool.PoolStatus{ObservedGeneration: 2, Replicas: 4, AvailableReplicas: 4}
	if err := rest.BeforeUpdate(NewStatusStrategy(strategy), ctx, withStatus, relabelled); err != nil {
		t.Fatalf("status update: %v", err)
	}
	if withStatus.Generation != 2 || withStatus.Status.AvailableReplicas != 4 {
		t.Errorf("after status update: generation %d, status %+v", withStatus.Generation, withStatus.Status)
	}

	badStatus := withStatus.DeepCopy()
	badStatus.Status.AvailableReplicas = 5
	expectInvalid(t, rest.BeforeUpdate(NewStatusStrategy(strategy), ctx, badStatus, withStatus), "status.availableReplicas")

	invalid := testPool()
	invalid.Spec.Replicas = ptr.To[int32](-1)
	rest.FillObjectMetaSystemFields(invalid)
	expectInvalid(t, rest.BeforeCreate(strategy, ctx, invalid), "spec.replicas")

	reselected := withStatus.DeepCopy()
	reselected.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a", "extra": "x"}}
	reselected.Spec.Template.Labels["extra"] = "x"
	expectInvalid(t, rest.BeforeUpdate(strategy, ctx, reselected, withStatus), "spec.selector")
}

func expectInvalid(t *testing.T, err error, fieldPath string) {
	t.Helper()
	if !apierrors.IsInvalid(err) {
		t.Fatalf("got %v, want 422 Invalid", err)
	}
	status := err.(apierrors.APIStatus).Status()
	if status.Code != 422 || status.Details == nil || status.Details.Kind != "Pool" {
		t.Errorf("status = %+v", status)
	}
	for _, cause := range status.Details.Causes {
		if cause.Field == fieldPath {
			return
		}
	}
	t.Errorf("no cause for %s in %+v", fieldPath, status.Details.Causes)
}

func TestGetResetFields(t *testing.T) {
	version := fieldpath.APIVersion(v1alpha1.SchemeGroupVersion.String())
	strategy := newTestStrategy(t)
	tests := []struct {
		name     string
		fields   map[fieldpath.APIVersion]*fieldpath.Set
		reset    []fieldpath.Path
		notReset []fieldpath.Path
	}{
		{
			name:     "main resource",
			fields:   strategy.GetResetFields(),
			reset:    []fieldpath.Path{fieldpath.MakePathOrDie("status"), fieldpath.MakePathOrDie("status", "replicas")},
			notReset: []fieldpath.Path{fieldpath.MakePathOrDie("spec"), fieldpath.MakePathOrDie("metadata", "labels")},
		},
		{
			name:   "status subresource",
			fields: NewStatusStrategy(strategy).GetResetFields(),
			reset: []fieldpath.Path{
				fieldpath.MakePathOrDie("spec"), fieldpath.MakePathOrDie("spec", "replicas"),
				fieldpath.MakePathOrDie("metadata", "labels"), fieldpath.MakePathOrDie("metadata", "annotations"),
			},
			notReset: []fieldpath.Path{fieldpath.MakePathOrDie("status"), fieldpath.MakePathOrDie("metadata", "name")},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.fields) != 1 {
				t.Errorf("reset fields for %d versions, want only %s: %v", len(tc.fields), version, tc.fields)
			}
			set, ok := tc.fields[version]
			if !ok {
				t.Fatalf("no reset fields for %s", version)
			}
			for _, path := range tc.reset {
				if !underSet(set, path) {
					t.Errorf("%s is not reset", path)
				}
			}
			for _, path := range tc.notReset {
				if underSet(set, path) {
					t.Errorf("%s is reset", path)
				}
			}
		})
	}
}

// underSet tells whether path is, or lies under, a path of set: server-side apply resets whole
// subtrees.
func underSet(set *fieldpath.Set, path fieldpath.Path) bool {
	for i := 1; i <= len(path); i++ {
		if set.Has(path[:i]) {
			return true
		}
	}
	return false
}

func TestStrategyScope(t *testing.T) {
	strategy := newTestStrategy(t)
	if !strategy.NamespaceScoped() {
		t.Error("pools must be namespaced")
	}
	if strategy.AllowCreateOnUpdate(context.Background()) {
		t.Error("an update must not create a pool")
	}
}

func TestGetAttrs(t *testing.T) {
	pool := testPool()
	gotLabels, gotFields, err := GetAttrs(pool)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(labels.Set{"team": "storage"}, gotLabels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(fields.Set{"metadata.name": "pool-a", "metadata.namespace": "storage"}, gotFields); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
	if _, _, err := GetAttrs(&pvpool.Checkout{}); err == nil {
		t.Error("GetAttrs accepted a Checkout")
	}

	byName := Matcher(labels.Everything(), fields.OneTermEqualSelector("metadata.name", "pool-a"))
	if ok, err := byName.Matches(pool); err != nil || !ok {
		t.Errorf("metadata.name=pool-a does not match: %v %v", ok, err)
	}
	byLabel := Matcher(labels.SelectorFromSet(labels.Set{"team": "other"}), fields.Everything())
	if ok, err := byLabel.Matches(pool); err != nil || ok {
		t.Errorf("team=other matches: %v %v", ok, err)
	}
}
