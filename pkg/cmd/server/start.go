// Package server is the command line of pvpool-apiserver: its options, and how they become a
// running server.
package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	basecompatibility "k8s.io/component-base/compatibility"
	componentbaseconfig "k8s.io/component-base/config"
	componentbaseoptions "k8s.io/component-base/config/options"
	baseversion "k8s.io/component-base/version"
	"k8s.io/klog/v2"
	netutils "k8s.io/utils/net"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/apiserver"
	poolcontroller "github.com/pvpool/pvpool/pkg/controller/pool"
	"github.com/pvpool/pvpool/pkg/embeddedetcd"
	generatedopenapi "github.com/pvpool/pvpool/pkg/generated/openapi"
)

const etcdPathPrefix = "/registry/pvpool.puppet.com"

// Options are the command-line options of pvpool-apiserver.
type Options struct {
	RecommendedOptions *genericoptions.RecommendedOptions
	// ComponentGlobalsRegistry holds the effective version and feature gates.
	ComponentGlobalsRegistry basecompatibility.ComponentGlobalsRegistry

	// DataDir holds the embedded etcd's data when no --etcd-servers are given.
	DataDir string
	// AlternateDNS are extra names for the self-signed serving certificate.
	AlternateDNS []string

	// LeaderElection elects the replica that runs the pool and checkout controllers.
	LeaderElection componentbaseconfig.LeaderElectionConfiguration
	// Pool configures the pool controller.
	Pool poolcontroller.Options
	// ControllerWorkers is the number of concurrent reconciles per controller.
	ControllerWorkers int
	// KubeAPIQPS and KubeAPIBurst limit the requests to kube-apiserver of the handout and controllers.
	KubeAPIQPS   float32
	KubeAPIBurst int

	StdOut io.Writer
	StdErr io.Writer
}

// NewOptions returns the default options.
func NewOptions(out, errOut io.Writer) *Options {
	o := &Options{
		RecommendedOptions: genericoptions.NewRecommendedOptions(
			etcdPathPrefix,
			apiserver.Codecs.LegacyCodec(v1alpha1.SchemeGroupVersion),
		),
		ComponentGlobalsRegistry: compatibility.DefaultComponentGlobalsRegistry,
		DataDir:                  "/var/lib/pvpool-apiserver",
		LeaderElection: componentbaseconfig.LeaderElectionConfiguration{
			LeaderElect:       true,
			LeaseDuration:     metav1.Duration{Duration: 15 * time.Second},
			RenewDeadline:     metav1.Duration{Duration: 10 * time.Second},
			RetryPeriod:       metav1.Duration{Duration: 2 * time.Second},
			ResourceLock:      resourcelock.LeasesResourceLock,
			ResourceName:      "pvpool-controllers",
			ResourceNamespace: metav1.NamespaceSystem,
		},
		Pool:              poolcontroller.Options{BinderImage: "busybox:stable-musl"},
		ControllerWorkers: 4,
		KubeAPIQPS:        200,
		KubeAPIBurst:      400,
		StdOut:            out,
		StdErr:            errOut,
	}
	_, _ = o.ComponentGlobalsRegistry.ComponentGlobalsOrRegister(basecompatibility.DefaultKubeComponent,
		basecompatibility.NewEffectiveVersionFromString(baseversion.DefaultKubeBinaryVersion, "", ""),
		utilfeature.DefaultMutableFeatureGate)
	o.RecommendedOptions.Etcd.StorageConfig.EncodeVersioner = runtime.NewMultiGroupVersioner(
		v1alpha1.SchemeGroupVersion, schema.GroupKind{Group: v1alpha1.GroupName})
	return o
}

// NewCommand returns the pvpool-apiserver command, run with ctx.
func NewCommand(ctx context.Context, o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pvpool-apiserver",
		Short: "Serve Pools and Checkouts (pvpool.puppet.com) as a Kubernetes aggregated API server",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return o.ComponentGlobalsRegistry.Set()
		},
		RunE: func(c *cobra.Command, args []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(args); err != nil {
				return err
			}
			return o.Run(c.Context())
		},
	}
	cmd.SetContext(ctx)

	flags := cmd.Flags()
	o.RecommendedOptions.AddFlags(flags)
	flags.StringVar(&o.DataDir, "data-dir", o.DataDir,
		"Directory of the embedded etcd, used when --etcd-servers is empty (single replica only).")
	componentbaseoptions.BindLeaderElectionFlags(&o.LeaderElection, flags)
	flags.StringVar(&o.Pool.BinderImage, "binder-image", o.Pool.BinderImage,
		"Image of the pod that binds a WaitForFirstConsumer replica of a pool without an init job.")
	flags.IntVar(&o.ControllerWorkers, "controller-workers", o.ControllerWorkers,
		"Concurrent reconciles of the pool and checkout controllers.")
	flags.Float32Var(&o.KubeAPIQPS, "kube-api-qps", o.KubeAPIQPS, "Queries per second to kube-apiserver for handouts and controllers.")
	flags.IntVar(&o.KubeAPIBurst, "kube-api-burst", o.KubeAPIBurst, "Burst of queries to kube-apiserver for handouts and controllers.")
	o.ComponentGlobalsRegistry.AddFlags(flags)
	return cmd
}

// Complete fills in options derived from others.
func (o *Options) Complete() error {
	return nil
}

// Validate checks the options. An empty --etcd-servers is valid: it selects the embedded etcd.
func (o *Options) Validate(args []string) error {
	var errs []error
	if len(args) > 0 {
		errs = append(errs, fmt.Errorf("no arguments are accepted, got %q", args))
	}
	recommended := *o.RecommendedOptions
	if o.usesEmbeddedEtcd() {
		if o.DataDir == "" {
			errs = append(errs, fmt.Errorf("--data-dir is required when --etcd-servers is empty"))
		}
		recommended.Etcd = nil
	}
	errs = append(errs, recommended.Validate()...)
	errs = append(errs, o.ComponentGlobalsRegistry.Validate()...)
	return utilerrors.NewAggregate(errs)
}

func (o *Options) usesEmbeddedEtcd() bool {
	return o.RecommendedOptions.Etcd != nil && len(o.RecommendedOptions.Etcd.StorageConfig.Transport.ServerList) == 0
}

// Config turns the options into a server configuration. When the options select the embedded etcd
// it is started here; the returned stop function stops it and must be called once the server has
// stopped.
func (o *Options) Config(ctx context.Context) (*apiserver.Config, func(), error) {
	stop := func() {}
	if err := o.RecommendedOptions.SecureServing.MaybeDefaultWithSelfSignedCerts(
		"localhost", o.AlternateDNS, []net.IP{netutils.ParseIPSloppy("127.0.0.1")}); err != nil {
		return nil, stop, fmt.Errorf("creating self-signed certificates: %w", err)
	}

	if o.usesEmbeddedEtcd() {
		etcd, err := embeddedetcd.Start(ctx, o.DataDir)
		if err != nil {
			return nil, stop, err
		}
		stop = etcd.Close
		o.RecommendedOptions.Etcd.StorageConfig.Transport.ServerList = []string{etcd.ClientURL()}
	}

	serverConfig := genericapiserver.NewRecommendedConfig(apiserver.Codecs)
	namer := openapi.NewDefinitionNamer(apiserver.Scheme)
	serverConfig.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(generatedopenapi.GetOpenAPIDefinitions, namer)
	serverConfig.OpenAPIConfig.Info.Title = "pvpool"
	serverConfig.OpenAPIConfig.Info.Version = v1alpha1.SchemeGroupVersion.Version
	serverConfig.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(generatedopenapi.GetOpenAPIDefinitions, namer)
	serverConfig.OpenAPIV3Config.Info.Title = "pvpool"
	serverConfig.OpenAPIV3Config.Info.Version = v1alpha1.SchemeGroupVersion.Version
	serverConfig.FeatureGate = o.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	serverConfig.EffectiveVersion = o.ComponentGlobalsRegistry.EffectiveVersionFor(basecompatibility.DefaultKubeComponent)

	if err := o.RecommendedOptions.ApplyTo(serverConfig); err != nil {
		stop()
		return nil, func() {}, err
	}
	config := &apiserver.Config{GenericConfig: serverConfig}
	if serverConfig.ClientConfig != nil {
		kubeConfig := rest.CopyConfig(serverConfig.ClientConfig)
		kubeConfig.QPS, kubeConfig.Burst = o.KubeAPIQPS, o.KubeAPIBurst
		kubeClient, err := kubernetes.NewForConfig(kubeConfig)
		if err != nil {
			stop()
			return nil, func() {}, err
		}
		config.ExtraConfig.Controllers = apiserver.ControllerConfig{
			KubeClient:     kubeClient,
			KubeInformers:  serverConfig.SharedInformerFactory,
			LeaderElection: o.LeaderElection,
			Pool:           o.Pool,
			Workers:        o.ControllerWorkers,
		}
	}
	return config, stop, nil
}

// Run serves until ctx is done, then stops the server and its embedded etcd.
func (o *Options) Run(ctx context.Context) error {
	config, stopEtcd, err := o.Config(ctx)
	if err != nil {
		return err
	}
	defer stopEtcd()

	server, err := config.Complete().New()
	if err != nil {
		return err
	}
	err = server.Run(ctx)
	klog.FromContext(ctx).Info("pvpool-apiserver stopped", "err", err)
	return err
}
