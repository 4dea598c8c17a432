package checkout

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
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

func testCheckout() *pvpool.Checkout {
	return &pvpool.Checkout{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "restricted", Name: "my-checkout", ResourceVersion: "12", Generation: 2,
			Labels:      map[string]string{"app": "ci"},
			Annotations: map[string]string{"example.com/build": "1234"},
		},
		Spec: pvpool.CheckoutSpec{
			PoolRef:     pvpool.PoolReference{Namespace: "storage", Name: "restricted-pool"},
			ClaimName:   "my-claim",
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		},
		Status: pvpool.CheckoutStatus{
			VolumeName:     "pv-1",
			VolumeClaimRef: corev1.LocalObjectReference{Name: "my-claim"},
			Conditions: []pvpool.CheckoutCondition{
				{Type: pvpool.CheckoutAcquired, Status: corev1.ConditionTrue, Reason: pvpool.CheckoutAcquiredReasonCheckedOut},
			},
		},
	}
}

func TestPrepareForCreate(t *testing.T) {
	strategy := newTestStrategy(t)
	checkout := testCheckout()
	checkout.Generation = 9
	strategy.PrepareForCreate(context.Background(), checkout)

	if diff := cmp.Diff(pvpool.CheckoutStatus{}, checkout.Status); diff != "" {
		t.Errorf("status not cleared on create (-want +got):\n%s", diff)
	}
	if checkout.Generation != 1 {
		t.Errorf("generation = %d, want 1", checkout.Generation)
	}
	if diff := cmp.Diff(testCheckout().Spec, checkout.Spec); diff != "" {
		t.Errorf("spec changed on create (-want +got):\n%s", diff)
	}
}

func TestPrepareForUpdate(t *testing.T) {
	tests := []struct {
		name           string
		mutate         func(*pvpool.Checkout)
		wantGeneration int64
	}{
		{name: "nothing changed", mutate: func(c *pvpool.Checkout) {}, wantGeneration: 2},
		{name: "labels changed", mutate: func(c *pvpool.Checkout) { c.Labels = nil }, wantGeneration: 2},
		{name: "annotations changed", mutate: func(c *pvpool.Checkout) { c.Annotations = map[string]string{"x": "y"} }, wantGeneration: 2},
		{name: "status changed", mutate: func(c *pvpool.Checkout) { c.Status = pvpool.CheckoutStatus{VolumeName: "pv-other"} }, wantGeneration: 2},
		{name: "pool changed", mutate: func(c *pvpool.Checkout) { c.Spec.PoolRef.Name = "other" }, wantGeneration: 3},
		{name: "claim name changed", mutate: func(c *pvpool.Checkout) { c.Spec.ClaimName = "" }, wantGeneration: 3},
		{
			name: "access modes changed",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}
			},
			wantGeneration: 3,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			strategy := newTestStrategy(t)
			old, checkout := testCheckout(), testCheckout()
			tc.mutate(checkout)
			want := checkout.DeepCopy()
			strategy.PrepareForUpdate(context.Background(), checkout, old)

			if checkout.Generation != tc.wantGeneration {
				t.Errorf("generation = %d, want %d", checkout.Generation, tc.wantGeneration)
			}
			if diff := cmp.Diff(old.Status, checkout.Status); diff != "" {
				t.Errorf("status is not the stored one (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want.Spec, checkout.Spec); diff != "" {
				t.Errorf("spec update lost (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want.ObjectMeta, checkout.ObjectMeta, ignoreGeneration); diff != "" {
				t.Errorf("metadata update lost (-want +got):\n%s", diff)
			}
		})
	}
}

var ignoreGeneration = cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Generation" }, cmp.Ignore())

func TestStatusPrepareForUpdate(t *testing.T) {
	strategy := NewStatusStrategy(newTestStrategy(t))
	old := testCheckout()
	old.Status = pvpool.CheckoutStatus{}
	checkout := testCheckout()
	checkout.Spec.PoolRef = pvpool.PoolReference{Name: "elsewhere"}
	checkout.Spec.AccessModes = nil
	checkout.Labels = map[string]string{"sneaky": "label"}
	checkout.Annotations = nil
	wantStatus := checkout.Status.DeepCopy()

	strategy.PrepareForUpdate(context.Background(), checkout, old)

	if diff := cmp.Diff(old.Spec, checkout.Spec); diff != "" {
		t.Errorf("status update changed the spec (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(old.Labels, checkout.Labels); diff != "" {
		t.Errorf("status update changed the labels (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(old.Annotations, checkout.Annotations); diff != "" {
		t.Errorf("status update changed the annotations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(*wantStatus, checkout.Status); diff != "" {
		t.Errorf("status update lost (-want +got):\n%s", diff)
	}
	if checkout.Generation != old.Generation {
		t.Errorf("generation = %d, want %d", checkout.Generation, old.Generation)
	}
}

// TestThroughGenericRegistry runs the strategies the way the generic registry Store does.
func TestThroughGenericRegistry(t *testing.T) {
	strategy := newTestStrategy(t)
	ctx := genericapirequest.WithNamespace(context.Background(), "restricted")

	created := testCheckout()
	rest.FillObjectMetaSystemFields(created)
	if err := rest.BeforeCreate(strategy, ctx, created); err != nil {
		t.Fatalf("create: %v", err)
	}
	if created.Generation != 1 || created.Status.VolumeName != "" {
		t.Errorf("after create: generation %d, status %+v", created.Generation, created.Status)
	}

	// Before the handout the spec may change.
	moved := created.DeepCopy()
	moved.Spec.PoolRef.Name = "other-pool"
	if err := rest.BeforeUpdate(strategy, ctx, moved, created); err != nil {
		t.Fatalf("update before handout: %v", err)
	}
	if moved.Generation != 2 {
		t.Errorf("generation after a spec update = %d, want 2", moved.Generation)
	}

	handedOut := moved.DeepCopy()
	handedOut.Status = pvpool.CheckoutStatus{VolumeName: "pv-1", VolumeClaimRef: corev1.LocalObjectReference{Name: "my-claim"}}
	if err := rest.BeforeUpdate(NewStatusStrategy(strategy), ctx, handedOut, moved); err != nil {
		t.Fatalf("status update: %v", err)
	}
	if handedOut.Generation != 2 || handedOut.Status.VolumeName != "pv-1" {
		t.Errorf("after status update: generation %d, status %+v", handedOut.Generation, handedOut.Status)
	}

	// After it, the spec is fixed, even if the client sends no status.
	movedAgain := handedOut.DeepCopy()
	movedAgain.Status = pvpool.CheckoutStatus{}
	movedAgain.Spec.PoolRef.Name = "third-pool"
	expectInvalid(t, rest.BeforeUpdate(strategy, ctx, movedAgain, handedOut), "spec.poolRef")

	relabelled := handedOut.DeepCopy()
	relabelled.Labels = map[string]string{"x": "y"}
	if err := rest.BeforeUpdate(strategy, ctx, relabelled, handedOut); err != nil {
		t.Fatalf("relabel after handout: %v", err)
	}

	badStatus := handedOut.DeepCopy()
	badStatus.Status.VolumeName = "Not A Volume"
	expectInvalid(t, rest.BeforeUpdate(NewStatusStrategy(strategy), ctx, badStatus, handedOut), "status.volumeName")

	invalid := testCheckout()
	invalid.Spec.PoolRef.Name = ""
	rest.FillObjectMetaSystemFields(invalid)
	expectInvalid(t, rest.BeforeCreate(strategy, ctx, invalid), "spec.poolRef.name")
}

func expectInvalid(t *testing.T, err error, fieldPath string) {
	t.Helper()
	if !apierrors.IsInvalid(err) {
		t.Fatalf("got %v, want 422 Invalid", err)
	}
	status := err.(apierrors.APIStatus).Status()
	if status.Code != 422 || status.Details == nil || status.Details.Kind != "Checkout" {
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
			reset:    []fieldpath.Path{fieldpath.MakePathOrDie("status"), fieldpath.MakePathOrDie("status", "volumeName")},
			notReset: []fieldpath.Path{fieldpath.MakePathOrDie("spec"), fieldpath.MakePathOrDie("metadata", "labels")},
		},
		{
			name:   "status subresource",
			fields: NewStatusStrategy(strategy).GetResetFields(),
			reset: []fieldpath.Path{
				fieldpath.MakePathOrDie("spec"), fieldpath.MakePathOrDie("spec", "poolRef", "name"),
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

func TestSelectableFields(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*pvpool.Checkout)
		want   fields.Set
	}{
		{
			name:   "explicit pool namespace and claim name",
			mutate: func(c *pvpool.Checkout) {},
			want: fields.Set{
				"metadata.name": "my-checkout", "metadata.namespace": "restricted",
				"spec.poolRef.name": "restricted-pool", "spec.poolRef.namespace": "storage",
				"spec.claimName": "my-claim", "status.volumeName": "pv-1",
			},
		},
		{
			name: "defaults resolved to the checkout's namespace and name",
			mutate: func(c *pvpool.Checkout) {
				c.Spec.PoolRef.Namespace = ""
				c.Spec.ClaimName = ""
				c.Status = pvpool.CheckoutStatus{}
			},
			want: fields.Set{
				"metadata.name": "my-checkout", "metadata.namespace": "restricted",
				"spec.poolRef.name": "restricted-pool", "spec.poolRef.namespace": "restricted",
				"spec.claimName": "my-checkout", "status.volumeName": "",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkout := testCheckout()
			tc.mutate(checkout)
			if diff := cmp.Diff(tc.want, SelectableFields(checkout)); diff != "" {
				t.Errorf("SelectableFields (-want +got):\n%s", diff)
			}
			gotLabels, gotFields, err := GetAttrs(checkout)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, gotFields); diff != "" {
				t.Errorf("GetAttrs fields (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(labels.Set(checkout.Labels), gotLabels); diff != "" {
				t.Errorf("GetAttrs labels (-want +got):\n%s", diff)
			}
		})
	}
	if _, _, err := GetAttrs(&pvpool.Pool{}); err == nil {
		t.Error("GetAttrs accepted a Pool")
	}
}

// Every field selector the versioned API accepts must be one the storage can evaluate.
func TestFieldLabelsServed(t *testing.T) {
	scheme := runtime.NewScheme()
	install.Install(scheme)
	served := SelectableFields(testCheckout())
	for label := range served {
		if _, _, err := scheme.ConvertFieldLabel(v1alpha1.SchemeGroupVersion.WithKind("Checkout"), label, "x"); err != nil {
			t.Errorf("field %s is stored but not accepted in a field selector: %v", label, err)
		}
	}
	if _, _, err := scheme.ConvertFieldLabel(v1alpha1.SchemeGroupVersion.WithKind("Checkout"), "spec.nothing", "x"); err == nil {
		t.Error("an unknown field selector was accepted")
	}
}

func TestMatcher(t *testing.T) {
	inOwnNamespace := testCheckout()
	inOwnNamespace.Spec.PoolRef.Namespace = ""
	inOwnNamespace.Spec.ClaimName = ""

	tests := []struct {
		name     string
		selector fields.Selector
		want     bool
	}{
		{"pool in the checkout's namespace", fields.ParseSelectorOrDie("spec.poolRef.namespace=restricted,spec.poolRef.name=restricted-pool"), true},
		{"pool in another namespace", fields.OneTermEqualSelector("spec.poolRef.namespace", "storage"), false},
		{"claim named after the checkout", fields.OneTermEqualSelector("spec.claimName", "my-checkout"), true},
		{"no volume yet", fields.OneTermEqualSelector("status.volumeName", ""), true},
		{"some volume", fields.OneTermNotEqualSelector("status.volumeName", ""), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inOwnNamespace.Status = pvpool.CheckoutStatus{}
			predicate := Matcher(labels.Everything(), tc.selector)
			got, err := predicate.Matches(inOwnNamespace)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("%s matches = %v, want %v", tc.selector, got, tc.want)
			}
		})
	}
	byLabel := Matcher(labels.SelectorFromSet(labels.Set{"app": "ci"}), fields.Everything())
	if ok, err := byLabel.Matches(testCheckout()); err != nil || !ok {
		t.Errorf("app=ci does not match: %v %v", ok, err)
	}
}

func TestStrategyScope(t *testing.T) {
	strategy := newTestStrategy(t)
	if !strategy.NamespaceScoped() {
		t.Error("checkouts must be namespaced")
	}
	if strategy.AllowCreateOnUpdate(context.Background()) {
		t.Error("an update must not create a checkout")
	}
}
