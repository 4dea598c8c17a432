package apiserver

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	componentbaseconfig "k8s.io/component-base/config"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	checkoutcontroller "github.com/pvpool/pvpool/pkg/controller/checkout"
	poolcontroller "github.com/pvpool/pvpool/pkg/controller/pool"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
	pvpoolinformers "github.com/pvpool/pvpool/pkg/generated/informers/externalversions"
	"github.com/pvpool/pvpool/pkg/handout"
)

// ControllerConfig configures the handout and the controllers that run inside the server.
type ControllerConfig struct {
	// KubeClient reaches kube-apiserver. Nil turns the handout and the controllers off: checkouts are
	// then only stored (used to test the API on its own).
	KubeClient kubernetes.Interface
	// KubeInformers watch kube-apiserver; started by the generic server's informer hook.
	KubeInformers informers.SharedInformerFactory
	// LeaderElection elects the one replica that runs the controllers; the handout of a create request
	// runs in every replica.
	LeaderElection componentbaseconfig.LeaderElectionConfiguration
	// Pool is passed to the pool controller.
	Pool poolcontroller.Options
	// Workers is the number of concurrent reconciles per controller.
	Workers int
}

// controllers is what New builds from a ControllerConfig.
type controllers struct {
	acquirer        *acquirer
	pvpoolInformers pvpoolinformers.SharedInformerFactory
	run             func(ctx context.Context)
}

func newControllers(cfg *ControllerConfig, pvpoolClient clientset.Interface) (*controllers, error) {
	if cfg.KubeClient == nil {
		return nil, nil
	}
	eventScheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(eventScheme))
	utilruntime.Must(v1alpha1.AddToScheme(eventScheme))
	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cfg.KubeClient.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(eventScheme, corev1.EventSource{Component: "pvpool-apiserver"})

	pvpoolInformers := pvpoolinformers.NewSharedInformerFactory(pvpoolClient, 0)
	checkouts := pvpoolInformers.Pvpool().V1alpha1().Checkouts()
	if err := checkoutcontroller.AddIndexers(checkouts); err != nil {
		return nil, err
	}
	h := handout.New(cfg.KubeClient, pvpoolClient, recorder)
	checkoutController, err := checkoutcontroller.NewController(h, checkouts, pvpoolInformers.Pvpool().V1alpha1().Pools(),
		cfg.KubeInformers.Core().V1().PersistentVolumeClaims())
	if err != nil {
		return nil, err
	}
	poolController, err := poolcontroller.NewController(cfg.KubeClient, pvpoolClient, cfg.KubeInformers, pvpoolInformers, recorder, cfg.Pool)
	if err != nil {
		return nil, err
	}
	workers := cfg.Workers
	if workers <= 0 {
		workers = 4
	}
	runControllers := func(ctx context.Context) {
		go checkoutController.Run(ctx, workers)
		poolController.Run(ctx, workers)
	}
	return &controllers{
		acquirer:        &acquirer{handout: h, waitingAhead: checkoutController.WaitingAhead},
		pvpoolInformers: pvpoolInformers,
		run: func(ctx context.Context) {
			if !cfg.LeaderElection.LeaderElect {
				runControllers(ctx)
				return
			}
			runLeaderElected(ctx, cfg, runControllers)
		},
	}, nil
}

// runLeaderElected runs the controllers while this replica holds the lease, until ctx is done.
func runLeaderElected(ctx context.Context, cfg *ControllerConfig, run func(context.Context)) {
	logger := klog.FromContext(ctx)
	hostname, _ := os.Hostname()
	identity := fmt.Sprintf("%s_%s", hostname, uuid.NewUUID())
	election := cfg.LeaderElection
	lock, err := resourcelock.New(election.ResourceLock, election.ResourceNamespace, election.ResourceName,
		cfg.KubeClient.CoreV1(), cfg.KubeClient.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: identity})
	if err != nil {
		logger.Error(err, "Cannot elect a leader; the controllers do not run")
		return
	}
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   election.LeaseDuration.Duration,
		RenewDeadline:   election.RenewDeadline.Duration,
		RetryPeriod:     election.RetryPeriod.Duration,
		ReleaseOnCancel: true,
		Name:            election.ResourceName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				logger.Info("Leading: running the controllers", "identity", identity)
				run(ctx)
			},
			OnStoppedLeading: func() { logger.Info("No longer leading: the controllers stopped", "identity", identity) },
		},
	})
}

// acquirer serves the create request's handout: the registry's internal types in, pkg/handout's
// versioned ones through.
type acquirer struct {
	handout      *handout.Handout
	waitingAhead func(*v1alpha1.Checkout) bool
}

func (a *acquirer) Acquire(ctx context.Context, created *pvpool.Checkout) (*pvpool.Checkout, []string, error) {
	versioned := &v1alpha1.Checkout{}
	if err := Scheme.Convert(created, versioned, nil); err != nil {
		return created, nil, err
	}
	outcome, err := a.handout.Acquire(ctx, versioned, a.waitingAhead(versioned))
	if err != nil {
		return created, nil, err
	}
	result := &pvpool.Checkout{}
	if err := Scheme.Convert(outcome.Checkout, result, nil); err != nil {
		return created, nil, err
	}
	var warnings []string
	if !outcome.Acquired {
		warnings = append(warnings, fmt.Sprintf("checkout %s/%s is waiting (%s): %s", created.Namespace, created.Name, outcome.Reason, outcome.Message))
	}
	return result, warnings, nil
}
