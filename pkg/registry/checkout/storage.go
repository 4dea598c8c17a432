package checkout

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/warning"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/registry/status"
)

// Storage is the REST storage of checkouts and checkouts/status.
type Storage struct {
	Checkout *REST
	Status   *status.REST
}

// REST serves the checkouts resource from etcd. Creating a checkout, or pointing it at another pool,
// needs the `use` verb on the pool; a created checkout is handed a volume in the same request.
type REST struct {
	*genericregistry.Store
	authorizer authorizer.Authorizer
	acquirer   Acquirer
}

// Acquirer hands a volume to a checkout that was just stored, returning it as stored afterwards.
// Warnings are shown to the user (kubectl prints them).
type Acquirer interface {
	Acquire(ctx context.Context, checkout *pvpool.Checkout) (acquired *pvpool.Checkout, warnings []string, err error)
}

// NewStorage returns the REST storage of checkouts, stored through optsGetter. authz decides the
// `use` checks (nil: every user may use every pool); acquirer, if not nil, hands out volumes to new
// checkouts.
func NewStorage(scheme *runtime.Scheme, optsGetter generic.RESTOptionsGetter, authz authorizer.Authorizer, acquirer Acquirer) (*Storage, error) {
	strategy := NewStrategy(scheme)
	store := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return &pvpool.Checkout{} },
		NewListFunc:               func() runtime.Object { return &pvpool.CheckoutList{} },
		PredicateFunc:             Matcher,
		DefaultQualifiedResource:  pvpool.Resource("checkouts"),
		SingularQualifiedResource: pvpool.Resource("checkout"),

		CreateStrategy:      strategy,
		UpdateStrategy:      strategy,
		DeleteStrategy:      strategy,
		ResetFieldsStrategy: strategy,

		TableConvertor: TableConvertor{},
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: GetAttrs}); err != nil {
		return nil, err
	}

	return &Storage{Checkout: &REST{Store: store, authorizer: authz, acquirer: acquirer}, Status: status.NewREST(store, NewStatusStrategy(strategy))}, nil
}

// ShortNames lets `kubectl get co` work alongside `kubectl get checkouts`.
func (r *REST) ShortNames() []string { return []string{"co"} }

// Categories puts checkouts in `kubectl get pvpool`.
func (r *REST) Categories() []string { return []string{"pvpool"} }

var (
	_ rest.StandardStorage    = &REST{}
	_ rest.ShortNamesProvider = &REST{}
	_ rest.CategoriesProvider = &REST{}
)

// Create stores the checkout once its user may use the pool, then hands it a volume. Failing to hand
// one out does not fail the request: the checkout exists, and the checkout controller finishes.
func (r *REST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	mayUse := func(ctx context.Context, obj runtime.Object) error {
		if err := authorizeUse(ctx, r.authorizer, obj.(*pvpool.Checkout)); err != nil {
			return err
		}
		if createValidation != nil {
			return createValidation(ctx, obj)
		}
		return nil
	}
	created, err := r.Store.Create(ctx, obj, mayUse, options)
	if err != nil || r.acquirer == nil || len(options.DryRun) > 0 {
		return created, err
	}
	acquired, warnings, err := r.acquirer.Acquire(ctx, created.(*pvpool.Checkout))
	for _, message := range warnings {
		warning.AddWarning(ctx, "", message)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Handout did not finish in the create request; the checkout controller retries", "checkout", klog.KObj(created.(*pvpool.Checkout)))
		warning.AddWarning(ctx, "", "the checkout was created but its volume handout did not finish ("+err.Error()+"); it is retried in the background")
		return created, nil
	}
	return acquired, nil
}

// Update checks `use` on the new pool when the update points the checkout at another one.
func (r *REST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	mayUse := func(ctx context.Context, obj, old runtime.Object) error {
		updated, previous := obj.(*pvpool.Checkout), old.(*pvpool.Checkout)
		if PoolNamespace(updated) != PoolNamespace(previous) || updated.Spec.PoolRef.Name != previous.Spec.PoolRef.Name {
			if err := authorizeUse(ctx, r.authorizer, updated); err != nil {
				return err
			}
		}
		if updateValidation != nil {
			return updateValidation(ctx, obj, old)
		}
		return nil
	}
	return r.Store.Update(ctx, name, objInfo, createValidation, mayUse, forceAllowCreate, options)
}
