package pool

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/registry/status"
)

// Storage is the REST storage of pools and pools/status.
type Storage struct {
	Pool   *REST
	Status *status.REST
}

// REST serves the pools resource from etcd.
type REST struct {
	*genericregistry.Store
}

// NewStorage returns the REST storage of pools, stored through optsGetter.
func NewStorage(scheme *runtime.Scheme, optsGetter generic.RESTOptionsGetter) (*Storage, error) {
	strategy := NewStrategy(scheme)
	store := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return &pvpool.Pool{} },
		NewListFunc:               func() runtime.Object { return &pvpool.PoolList{} },
		PredicateFunc:             Matcher,
		DefaultQualifiedResource:  pvpool.Resource("pools"),
		SingularQualifiedResource: pvpool.Resource("pool"),

		CreateStrategy:      strategy,
		UpdateStrategy:      strategy,
		DeleteStrategy:      strategy,
		ResetFieldsStrategy: strategy,

		TableConvertor: TableConvertor{},
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: GetAttrs}); err != nil {
		return nil, err
	}

	return &Storage{Pool: &REST{store}, Status: status.NewREST(store, NewStatusStrategy(strategy))}, nil
}

// ShortNames lets `kubectl get pl` work alongside `kubectl get pools`.
func (r *REST) ShortNames() []string { return []string{"pl"} }

// Categories puts pools in `kubectl get pvpool`.
func (r *REST) Categories() []string { return []string{"pvpool"} }

var (
	_ rest.StandardStorage    = &REST{}
	_ rest.ShortNamesProvider = &REST{}
	_ rest.CategoriesProvider = &REST{}
)
