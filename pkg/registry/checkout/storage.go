package checkout

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/registry/status"
)

// Storage is the REST storage of checkouts and checkouts/status.
type Storage struct {
	Checkout *REST
	Status   *status.REST
}

// REST serves the checkouts resource from etcd.
type REST struct {
	*genericregistry.Store
}

// NewStorage returns the REST storage of checkouts, stored through optsGetter.
func NewStorage(scheme *runtime.Scheme, optsGetter generic.RESTOptionsGetter) (*Storage, error) {
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

	return &Storage{Checkout: &REST{store}, Status: status.NewREST(store, NewStatusStrategy(strategy))}, nil
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
