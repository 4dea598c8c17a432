// Package pool runs the pool controller: it keeps spec.replicas replica claims per Pool, makes them
// available (bound and, if the pool has one, initialized by its init job) and reports the pool's
// status. The handout (pkg/handout) takes available replicas away; the contract between the two is
// pkg/replica.
//
// A replica is a claim made from spec.template (generateName "<pool>-"), controlled by the Pool. A
// claim that a handout took (replica.IsTaken) is no longer a replica: it is never counted, updated or
// deleted. A replica goes through:
//
//   - initializing: with spec.initJob, the Job "<claim>-init" (owned by the claim) runs with the claim
//     as pod volume spec.initJob.volumeName; without one, a claim of a WaitForFirstConsumer class
//     gets the Job "<claim>-bind", whose pod only mounts the claim so that it gets provisioned;
//   - available: bound, its job (if any) succeeded; the controller sets replica.AnnotationAvailable,
//     then, once its cache shows the claim available, deletes the job and its pods;
//   - stale: its job failed, the claim is Lost, or its volume is gone or Failed. The claim (and its
//     job) is deleted and replaced; replacements after failed jobs back off per pool, exponentially.
//
// All creates and deletes a reconcile needs run in parallel. Scale-down removes replicas not yet
// available first, then the newest. Deletes carry the claim's UID and resourceVersion, so a claim a
// handout took after the controller read it is never deleted.
//
// Status: replicas counts the live (not deleting, not taken) replicas, availableReplicas the available
// ones. Condition Available follows PVPool: True (MinimumReplicasAvailable) as soon as one replica can
// be checked out; False with NoReplicasRequested when spec.replicas is 0, or
// MinimumReplicasUnavailable when none is available. Condition Settlement: True/Settled when the pool
// holds exactly spec.replicas replicas, all available; False/Invalid when replicas cannot be made (the
// template's storage class does not exist, the API server rejects the claim or the init job as
// invalid); Unknown/InitJobFailed while replicas whose jobs failed are being replaced with backoff;
// Unknown/Settling otherwise. lastTransitionTime moves only when a condition's status does. Events:
// PoolScaling ("Created N replicas", "Deleted N replicas"), StaleReplica (warning, per replaced
// replica), Invalid (warning).
package pool

import (
	"context"
	"fmt"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	batchlisters "k8s.io/client-go/listers/batch/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
	"github.com/pvpool/pvpool/pkg/generated/informers/externalversions"
	pvpoollisters "github.com/pvpool/pvpool/pkg/generated/listers/pvpool/v1alpha1"
)

const (
	// DefaultBinderImage runs the pod that binds WaitForFirstConsumer claims of pools without an
	// init job.
	DefaultBinderImage = "busybox:stable-musl"
	// DefaultFailureBackoff is the first delay before a replica whose job failed is replaced.
	DefaultFailureBackoff = 5 * time.Second
	// DefaultMaxFailureBackoff caps the delay between replacements of replicas whose jobs keep failing.
	DefaultMaxFailureBackoff = 5 * time.Minute
	// DefaultMaxConcurrentWrites bounds the API writes one reconcile issues at once.
	DefaultMaxConcurrentWrites = 16

	controllerName = "pool-controller"
)

// Options tune the pool controller. Zero values take the defaults above.
type Options struct {
	// BinderImage is the image of the pod that binds WaitForFirstConsumer claims when the pool has
	// no init job.
	BinderImage string
	// BinderCommand is what the binder pod runs; it only has to exit 0. Defaults to ["true"].
	BinderCommand []string
	// FailureBackoff is the first delay before replacing a replica whose job failed; it doubles with
	// every further failure of the same pool, up to MaxFailureBackoff.
	FailureBackoff    time.Duration
	MaxFailureBackoff time.Duration
	// MaxConcurrentWrites bounds the creates, updates and deletes one reconcile runs in parallel.
	MaxConcurrentWrites int
	// Clock is for tests; defaults to the real clock.
	Clock clock.WithTicker
}

func (o *Options) setDefaults() {
	if o.BinderImage == "" {
		o.BinderImage = DefaultBinderImage
	}
	if len(o.BinderCommand) == 0 {
		o.BinderCommand = []string{"true"}
	}
	if o.FailureBackoff <= 0 {
		o.FailureBackoff = DefaultFailureBackoff
	}
	if o.MaxFailureBackoff <= 0 {
		o.MaxFailureBackoff = DefaultMaxFailureBackoff
	}
	if o.MaxFailureBackoff < o.FailureBackoff {
		o.MaxFailureBackoff = o.FailureBackoff
	}
	if o.MaxConcurrentWrites <= 0 {
		o.MaxConcurrentWrites = DefaultMaxConcurrentWrites
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
}

// Controller reconciles Pools with their replica claims.
type Controller struct {
	kubeClient   kubernetes.Interface
	pvpoolClient clientset.Interface
	recorder     record.EventRecorder
	options      Options

	poolLister   pvpoollisters.PoolLister
	claimLister  corelisters.PersistentVolumeClaimLister
	volumeLister corelisters.PersistentVolumeLister
	jobLister    batchlisters.JobLister
	classLister  storagelisters.StorageClassLister
	cacheSynced  []cache.InformerSynced

	queue    workqueue.TypedRateLimitingInterface[string]
	backoff  *failureBackoff
	inflight *inflight
}

// NewController registers the controller's event handlers on the informers. The caller starts the
// factories (before or after Run); Run waits for them to sync.
func NewController(kubeClient kubernetes.Interface, pvpoolClient clientset.Interface,
	kubeInformers informers.SharedInformerFactory, pvpoolInformers externalversions.SharedInformerFactory,
	recorder record.EventRecorder, options Options) (*Controller, error) {
	options.setDefaults()
	pools := pvpoolInformers.Pvpool().V1alpha1().Pools()
	claims := kubeInformers.Core().V1().PersistentVolumeClaims()
	volumes := kubeInformers.Core().V1().PersistentVolumes()
	jobs := kubeInformers.Batch().V1().Jobs()
	classes := kubeInformers.Storage().V1().StorageClasses()

	c := &Controller{
		kubeClient:   kubeClient,
		pvpoolClient: pvpoolClient,
		recorder:     recorder,
		options:      options,
		poolLister:   pools.Lister(),
		claimLister:  claims.Lister(),
		volumeLister: volumes.Lister(),
		jobLister:    jobs.Lister(),
		classLister:  classes.Lister(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: controllerName, Clock: options.Clock}),
		backoff:  newFailureBackoff(options.FailureBackoff, options.MaxFailureBackoff),
		inflight: newInflight(options.Clock),
	}

	handlers := []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		{pools.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.enqueuePool,
			UpdateFunc: func(_, obj interface{}) { c.enqueuePool(obj) },
			DeleteFunc: c.poolDeleted,
		}},
		{claims.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.claimAdded,
			UpdateFunc: c.claimUpdated,
			DeleteFunc: c.claimDeleted,
		}},
		{volumes.Informer(), cache.ResourceEventHandlerFuncs{
			UpdateFunc: c.volumeUpdated,
			DeleteFunc: c.volumeDeleted,
		}},
		{jobs.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.jobChanged,
			UpdateFunc: func(_, obj interface{}) { c.jobChanged(obj) },
			DeleteFunc: c.jobChanged,
		}},
		{classes.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.classChanged,
			UpdateFunc: func(_, obj interface{}) { c.classChanged(obj) },
			DeleteFunc: c.classChanged,
		}},
	}
	for _, h := range handlers {
		registration, err := h.informer.AddEventHandler(h.handler)
		if err != nil {
			return nil, fmt.Errorf("registering pool controller event handler: %w", err)
		}
		c.cacheSynced = append(c.cacheSynced, registration.HasSynced)
	}
	return c, nil
}

// Run processes pools with workers goroutines until ctx is done.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrashWithContext(ctx)
	defer c.queue.ShutDown()
	logger := klog.FromContext(ctx).WithName(controllerName)
	ctx = klog.NewContext(ctx, logger)

	logger.Info("Starting pool controller", "workers", workers)
	defer logger.Info("Shutting down pool controller")
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.cacheSynced...) {
		return
	}
	if workers < 1 {
		workers = 1
	}
	for range workers {
		go wait.UntilWithContext(ctx, c.runWorker, time.Second)
	}
	<-ctx.Done()
}

func (c *Controller) runWorker(ctx context.Context) {
	for c.processNextItem(ctx) {
	}
}

func (c *Controller) processNextItem(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)

	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		utilruntime.HandleErrorWithContext(ctx, err, "Invalid pool key", "key", key)
		c.queue.Forget(key)
		return true
	}
	logger := klog.FromContext(ctx).WithValues("pool", klog.KRef(namespace, name))
	requeueAfter, err := c.sync(klog.NewContext(ctx, logger), namespace, name)
	switch {
	case err != nil:
		if apierrors.IsConflict(err) {
			logger.V(4).Info("Conflict while reconciling pool, requeueing", "err", err)
		} else {
			logger.Error(err, "Reconciling pool failed, requeueing")
		}
		c.queue.AddRateLimited(key)
	default:
		c.queue.Forget(key)
		if requeueAfter > 0 {
			c.queue.AddAfter(key, requeueAfter)
		}
	}
	return true
}

func (c *Controller) enqueuePool(obj interface{}) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	c.queue.Add(key)
}

func (c *Controller) poolDeleted(obj interface{}) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	if pool, ok := obj.(*v1alpha1.Pool); ok {
		c.backoff.forget(pool.UID)
		c.inflight.forget(poolKey(pool.Namespace, pool.Name))
	}
	c.enqueuePool(obj)
}

// poolOf returns the key of the pool that controls obj, if any.
func poolOf(obj metav1.Object) (string, bool) {
	owner := metav1.GetControllerOf(obj)
	if owner == nil || owner.Kind != "Pool" {
		return "", false
	}
	if gv, err := schema.ParseGroupVersion(owner.APIVersion); err != nil || gv.Group != v1alpha1.GroupName {
		return "", false
	}
	return poolKey(obj.GetNamespace(), owner.Name), true
}

func poolKey(namespace, name string) string {
	return namespace + "/" + name
}

func claimFrom(obj interface{}) (*corev1.PersistentVolumeClaim, bool) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	claim, ok := obj.(*corev1.PersistentVolumeClaim)
	return claim, ok
}

func (c *Controller) claimAdded(obj interface{}) {
	claim, ok := claimFrom(obj)
	if !ok {
		return
	}
	if key, ok := poolOf(claim); ok {
		c.inflight.observeCreated(key, claim.Name, claim.CreationTimestamp.Time)
		if claim.DeletionTimestamp != nil {
			c.inflight.observeDeleted(key, claim.UID)
		}
		c.queue.Add(key)
	}
}

func (c *Controller) claimUpdated(oldObj, newObj interface{}) {
	claim, ok := claimFrom(newObj)
	if !ok {
		return
	}
	if key, ok := poolOf(claim); ok {
		if claim.DeletionTimestamp != nil {
			c.inflight.observeDeleted(key, claim.UID)
		}
		c.queue.Add(key)
	}
	// A claim may have been released by its pool (its controller reference removed): the old owner
	// has to count again.
	if old, ok := claimFrom(oldObj); ok {
		if oldKey, ok := poolOf(old); ok {
			c.queue.Add(oldKey)
		}
	}
}

func (c *Controller) claimDeleted(obj interface{}) {
	claim, ok := claimFrom(obj)
	if !ok {
		return
	}
	if key, ok := poolOf(claim); ok {
		c.inflight.observeDeleted(key, claim.UID)
		c.queue.Add(key)
	}
}

// enqueueClaimPool enqueues the pool that controls the named claim, if it is known.
func (c *Controller) enqueueClaimPool(namespace, name string) {
	claim, err := c.claimLister.PersistentVolumeClaims(namespace).Get(name)
	if err != nil {
		return
	}
	if key, ok := poolOf(claim); ok {
		c.queue.Add(key)
	}
}

func (c *Controller) volumeUpdated(oldObj, newObj interface{}) {
	old, okOld := oldObj.(*corev1.PersistentVolume)
	volume, ok := newObj.(*corev1.PersistentVolume)
	if !ok || !okOld || volume.Spec.ClaimRef == nil {
		return
	}
	// Only a change of phase can make a replica lost.
	if old.Status.Phase == volume.Status.Phase {
		return
	}
	c.enqueueClaimPool(volume.Spec.ClaimRef.Namespace, volume.Spec.ClaimRef.Name)
}

func (c *Controller) volumeDeleted(obj interface{}) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	volume, ok := obj.(*corev1.PersistentVolume)
	if !ok || volume.Spec.ClaimRef == nil {
		return
	}
	c.enqueueClaimPool(volume.Spec.ClaimRef.Namespace, volume.Spec.ClaimRef.Name)
}

func (c *Controller) jobChanged(obj interface{}) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	job, ok := obj.(*batchv1.Job)
	if !ok {
		return
	}
	owner := metav1.GetControllerOf(job)
	if owner == nil || owner.Kind != "PersistentVolumeClaim" || owner.APIVersion != "v1" {
		return
	}
	c.enqueueClaimPool(job.Namespace, owner.Name)
}

// classChanged enqueues every pool: a pool may be waiting for its class to exist, or its claims for
// a binder pod. Storage classes change rarely.
func (c *Controller) classChanged(interface{}) {
	pools, err := c.poolLister.List(labels.Everything())
	if err != nil {
		return
	}
	for _, pool := range pools {
		c.queue.Add(poolKey(pool.Namespace, pool.Name))
	}
}
