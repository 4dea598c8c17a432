// Package checkout is the REST storage of Checkouts: how they are validated, stored in etcd and
// printed.
package checkout

import (
	"context"
	"fmt"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/validation"
)

// Strategy is how Checkouts are created, updated and deleted through the main resource.
type Strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
}

// NewStrategy returns the strategy of the checkouts resource.
func NewStrategy(typer runtime.ObjectTyper) Strategy {
	return Strategy{typer, names.SimpleNameGenerator}
}

func (Strategy) NamespaceScoped() bool { return true }

// GetResetFields tells server-side apply that the main resource never owns status.
func (Strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		"pvpool.puppet.com/v1alpha1": fieldpath.NewSet(fieldpath.MakePathOrDie("status")),
	}
}

func (Strategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	checkout := obj.(*pvpool.Checkout)
	checkout.Status = pvpool.CheckoutStatus{}
	checkout.Generation = 1
}

func (Strategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	newCheckout, oldCheckout := obj.(*pvpool.Checkout), old.(*pvpool.Checkout)
	newCheckout.Status = oldCheckout.Status
	if !apiequality.Semantic.DeepEqual(newCheckout.Spec, oldCheckout.Spec) {
		newCheckout.Generation = oldCheckout.Generation + 1
	}
}

func (Strategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	return validation.ValidateCheckout(obj.(*pvpool.Checkout))
}

func (Strategy) WarningsOnCreate(ctx context.Context, obj runtime.Object) []string { return nil }

func (Strategy) AllowCreateOnUpdate(ctx context.Context) bool { return false }

func (Strategy) AllowUnconditionalUpdate(ctx context.Context) bool { return true }

func (Strategy) Canonicalize(obj runtime.Object) {}

func (Strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return validation.ValidateCheckoutUpdate(obj.(*pvpool.Checkout), old.(*pvpool.Checkout))
}

func (Strategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string { return nil }

// StatusStrategy is how the handout records its result through the status subresource.
type StatusStrategy struct {
	Strategy
}

// NewStatusStrategy returns the strategy of the checkouts/status subresource.
func NewStatusStrategy(strategy Strategy) StatusStrategy {
	return StatusStrategy{strategy}
}

// GetResetFields tells server-side apply that the status subresource never owns spec or metadata.
func (StatusStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		"pvpool.puppet.com/v1alpha1": fieldpath.NewSet(
			fieldpath.MakePathOrDie("spec"),
			fieldpath.MakePathOrDie("metadata", "labels"),
			fieldpath.MakePathOrDie("metadata", "annotations"),
		),
	}
}

func (StatusStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	newCheckout, oldCheckout := obj.(*pvpool.Checkout), old.(*pvpool.Checkout)
	newCheckout.Spec = oldCheckout.Spec
	newCheckout.Labels = oldCheckout.Labels
	newCheckout.Annotations = oldCheckout.Annotations
}

func (StatusStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return validation.ValidateCheckoutStatusUpdate(obj.(*pvpool.Checkout), old.(*pvpool.Checkout))
}

func (StatusStrategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string {
	return nil
}

// PoolNamespace is the namespace of the pool a checkout refers to.
func PoolNamespace(checkout *pvpool.Checkout) string {
	if checkout.Spec.PoolRef.Namespace != "" {
		return checkout.Spec.PoolRef.Namespace
	}
	return checkout.Namespace
}

// ClaimName is the name of the claim a checkout hands its volume out as.
func ClaimName(checkout *pvpool.Checkout) string {
	if checkout.Spec.ClaimName != "" {
		return checkout.Spec.ClaimName
	}
	return checkout.Name
}

// SelectableFields are the fields Checkouts can be selected by. The pool namespace and claim name
// are the effective ones, defaults resolved, so that "the checkouts of pool ns/name" is one query.
func SelectableFields(checkout *pvpool.Checkout) fields.Set {
	return generic.AddObjectMetaFieldsSet(fields.Set{
		v1alpha1.CheckoutPoolNameField:      checkout.Spec.PoolRef.Name,
		v1alpha1.CheckoutPoolNamespaceField: PoolNamespace(checkout),
		v1alpha1.CheckoutClaimNameField:     ClaimName(checkout),
		v1alpha1.CheckoutVolumeNameField:    checkout.Status.VolumeName,
	}, &checkout.ObjectMeta, true)
}

// GetAttrs returns the labels and fields a Checkout can be selected by.
func GetAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	checkout, ok := obj.(*pvpool.Checkout)
	if !ok {
		return nil, nil, fmt.Errorf("not a Checkout: %T", obj)
	}
	return checkout.Labels, SelectableFields(checkout), nil
}

// Matcher selects Checkouts by label and field.
func Matcher(label labels.Selector, field fields.Selector) storage.SelectionPredicate {
	return storage.SelectionPredicate{Label: label, Field: field, GetAttrs: GetAttrs}
}
