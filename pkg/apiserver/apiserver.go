// Package apiserver assembles pvpool-apiserver from a completed configuration: the generic API
// server with the pvpool.puppet.com group installed.
package apiserver

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/install"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
	checkoutregistry "github.com/pvpool/pvpool/pkg/registry/checkout"
	poolregistry "github.com/pvpool/pvpool/pkg/registry/pool"
)

var (
	// Scheme holds the internal and versioned pvpool types and the meta types the server needs.
	Scheme = runtime.NewScheme()
	// Codecs serializes objects of Scheme.
	Codecs = serializer.NewCodecFactory(Scheme)
)

func init() {
	install.Install(Scheme)

	// The generic server decodes options (ListOptions, ...) through the unversioned meta group.
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	Scheme.AddUnversionedTypes(unversioned,
		&metav1.Status{},
		&metav1.APIVersions{},
		&metav1.APIGroupList{},
		&metav1.APIGroup{},
		&metav1.APIResourceList{},
	)
}

// ExtraConfig is the configuration specific to pvpool.
type ExtraConfig struct {
	Controllers ControllerConfig
}

// Config is the whole configuration of pvpool-apiserver.
type Config struct {
	GenericConfig *genericapiserver.RecommendedConfig
	ExtraConfig   ExtraConfig
}

type completedConfig struct {
	GenericConfig genericapiserver.CompletedConfig
	ExtraConfig   *ExtraConfig
}

// CompletedConfig can only be made by Config.Complete, so a server is never built from a
// configuration whose defaults were not filled in.
type CompletedConfig struct {
	*completedConfig
}

// Server is a pvpool API server ready to run.
type Server struct {
	GenericAPIServer *genericapiserver.GenericAPIServer
}

// Complete fills in the defaults of cfg.
func (cfg *Config) Complete() CompletedConfig {
	return CompletedConfig{&completedConfig{
		GenericConfig: cfg.GenericConfig.Complete(),
		ExtraConfig:   &cfg.ExtraConfig,
	}}
}

// New builds the server from a completed configuration.
func (c completedConfig) New() (*Server, error) {
	genericServer, err := c.GenericConfig.New("pvpool-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, err
	}

	pvpoolClient, err := clientset.NewForConfig(c.GenericConfig.LoopbackClientConfig)
	if err != nil {
		return nil, err
	}
	controllers, err := newControllers(&c.ExtraConfig.Controllers, pvpoolClient)
	if err != nil {
		return nil, err
	}
	var checkoutAcquirer checkoutregistry.Acquirer
	if controllers != nil {
		checkoutAcquirer = controllers.acquirer
	}

	pools, err := poolregistry.NewStorage(Scheme, c.GenericConfig.RESTOptionsGetter)
	if err != nil {
		return nil, err
	}
	checkouts, err := checkoutregistry.NewStorage(Scheme, c.GenericConfig.RESTOptionsGetter, c.GenericConfig.Authorization.Authorizer, checkoutAcquirer)
	if err != nil {
		return nil, err
	}

	apiGroupInfo := genericapiserver.NewDefaultAPIGroupInfo(pvpool.GroupName, Scheme, metav1.ParameterCodec, Codecs)
	apiGroupInfo.NegotiatedSerializer = withoutProtobuf{Codecs}
	apiGroupInfo.VersionedResourcesStorageMap["v1alpha1"] = map[string]rest.Storage{
		"pools":            pools.Pool,
		"pools/status":     pools.Status,
		"checkouts":        checkouts.Checkout,
		"checkouts/status": checkouts.Status,
	}
	if err := genericServer.InstallAPIGroup(&apiGroupInfo); err != nil {
		return nil, err
	}
	if informers := c.GenericConfig.SharedInformerFactory; informers != nil {
		genericServer.AddPostStartHookOrDie("start-pvpool-informers", func(hookContext genericapiserver.PostStartHookContext) error {
			informers.Start(hookContext.Done())
			return nil
		})
	}
	if controllers != nil {
		genericServer.AddPostStartHookOrDie("start-pvpool-controllers", func(hookContext genericapiserver.PostStartHookContext) error {
			controllers.pvpoolInformers.Start(hookContext.Done())
			c.ExtraConfig.Controllers.KubeInformers.Start(hookContext.Done())
			go controllers.run(hookContext)
			return nil
		})
	}
	return &Server{GenericAPIServer: genericServer}, nil
}

// Run serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	return s.GenericAPIServer.PrepareRun().RunWithContext(ctx)
}
