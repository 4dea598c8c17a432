// Package pool is the REST storage of Pools: how they are validated, stored in etcd and printed.
package pool

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
	"github.com/pvpool/pvpool/pkg/apis/pvpool/validation"
)

// Strategy is how Pools are created, updated and deleted through the main resource.
type Strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
}

// NewStrategy returns the strategy of the pools resource.
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
	pool := obj.(*pvpool.Pool)
	pool.Status = pvpool.PoolStatus{}
	pool.Generation = 1
}

func (Strategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	newPool, oldPool := obj.(*pvpool.Pool), old.(*pvpool.Pool)
	newPool.Status = oldPool.Status
	if !apiequality.Semantic.DeepEqual(newPool.Spec, oldPool.Spec) {
		newPool.Generation = oldPool.Generation + 1
	}
}

func (Strategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	return validation.ValidatePool(obj.(*pvpool.Pool))
}

func (Strategy) WarningsOnCreate(ctx context.Context, obj runtime.Object) []string { return nil }

func (Strategy) AllowCreateOnUpdate(ctx context.Context) bool { return false }

func (Strategy) AllowUnconditionalUpdate(ctx context.Context) bool { return true }

func (Strategy) Canonicalize(obj runtime.Object) {}

func (Strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return validation.ValidatePoolUpdate(obj.(*pvpool.Pool), old.(*pvpool.Pool))
}

func (Strategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string { return nil }

// StatusStrategy is how the pool controller updates Pools through the status subresource.
type StatusStrategy struct {
	Strategy
}

// NewStatusStrategy returns the strategy of the pools/status subresource.
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
	newPool, oldPool := obj.(*pvpool.Pool), old.(*pvpool.Pool)
	newPool.Spec = oldPool.Spec
	newPool.Labels = oldPool.Labels
	newPool.Annotations = oldPool.Annotations
}

func (StatusStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return validation.ValidatePoolStatusUpdate(obj.(*pvpool.Pool), old.(*pvpool.Pool))
}

func (StatusStrategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string {
	return nil
}

// GetAttrs returns the labels and fields a Pool can be selected by.
func GetAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	pool, ok := obj.(*pvpool.Pool)
	if !ok {
		return nil, nil, fmt.Errorf("not a Pool: %T", obj)
	}
	return pool.Labels, generic.ObjectMetaFieldsSet(&pool.ObjectMeta, true), nil
}

// Matcher selects Pools by label and field.
func Matcher(label labels.Selector, field fields.Selector) storage.SelectionPredicate {
	return storage.SelectionPredicate{Label: label, Field: field, GetAttrs: GetAttrs}
}
