// Package checkout is the checkout controller: it fulfils waiting checkouts in creation order as
// replicas become available, gives a checkout whose claim was deleted a new volume, and gives back
// what interrupted handouts of deleted checkouts still hold. The handout itself is pkg/handout's.
package checkout

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	pvpoolinformers "github.com/pvpool/pvpool/pkg/generated/informers/externalversions/pvpool/v1alpha1"
	pvpoollisters "github.com/pvpool/pvpool/pkg/generated/listers/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/handout"
	"github.com/pvpool/pvpool/pkg/replica"
)

const (
	// byPool indexes checkouts by the pool they refer to ("namespace/name").
	byPool = "pool"
	// byClaim indexes checkouts by the claim they hand out ("namespace/name").
	byClaim = "claim"
	// releaseKey is the queue item that runs ReleaseAbandoned.
	releaseKey = "\x00release"
	// resyncPeriod bounds how long an abandoned handout, or a checkout whose event was missed, waits.
	resyncPeriod = 30 * time.Second
)

// Controller fulfils checkouts. Queue items are pool keys: serving a pool's waiting checkouts one
// after the other, oldest first, is what keeps them in creation order.
type Controller struct {
	handout   *handout.Handout
	checkouts pvpoollisters.CheckoutLister
	indexer   cache.Indexer
	claims    corelisters.PersistentVolumeClaimLister
	synced    []cache.InformerSynced
	queue     workqueue.TypedRateLimitingInterface[string]
}

// AddIndexers adds the indexes the controller and WaitingAhead need to the checkout informer; call it
// before the informer starts.
func AddIndexers(checkouts pvpoolinformers.CheckoutInformer) error {
	return checkouts.Informer().AddIndexers(cache.Indexers{
		byPool: func(obj interface{}) ([]string, error) {
			return []string{handout.PoolKey(obj.(*v1alpha1.Checkout))}, nil
		},
		byClaim: func(obj interface{}) ([]string, error) {
			checkout := obj.(*v1alpha1.Checkout)
			return []string{checkout.Namespace + "/" + handout.ClaimName(checkout)}, nil
		},
	})
}

// NewController returns a controller acting through h, watching checkouts, pools and claims.
func NewController(h *handout.Handout, checkouts pvpoolinformers.CheckoutInformer, pools pvpoolinformers.PoolInformer, claims coreinformers.PersistentVolumeClaimInformer) (*Controller, error) {
	c := &Controller{
		handout:   h,
		checkouts: checkouts.Lister(),
		indexer:   checkouts.Informer().GetIndexer(),
		claims:    claims.Lister(),
		synced:    []cache.InformerSynced{checkouts.Informer().HasSynced, pools.Informer().HasSynced, claims.Informer().HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "checkout"}),
	}
	if _, err := checkouts.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { c.enqueueCheckout(obj) },
		UpdateFunc: func(_, obj interface{}) { c.enqueueCheckout(obj) },
		DeleteFunc: func(interface{}) { c.queue.Add(releaseKey) },
	}); err != nil {
		return nil, err
	}
	if _, err := pools.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { c.enqueuePool(obj) },
		UpdateFunc: func(_, obj interface{}) { c.enqueuePool(obj) },
	}); err != nil {
		return nil, err
	}
	if _, err := claims.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { c.claimChanged(obj) },
		UpdateFunc: func(_, obj interface{}) { c.claimChanged(obj) },
		DeleteFunc: func(obj interface{}) { c.claimChanged(obj) },
	}); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Controller) enqueueCheckout(obj interface{}) {
	checkout, ok := obj.(*v1alpha1.Checkout)
	if ok && c.needsWork(checkout) {
		c.queue.Add(handout.PoolKey(checkout))
	}
}

func (c *Controller) enqueuePool(obj interface{}) {
	if pool, ok := obj.(*v1alpha1.Pool); ok {
		c.queue.Add(pool.Namespace + "/" + pool.Name)
	}
}

// claimChanged wakes the pools a claim event may matter to: the pool of a replica that became
// available, the pool of a checkout whose claim changed or went away, and the pools of checkouts
// waiting for a claim name to be freed.
func (c *Controller) claimChanged(obj interface{}) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	claim, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok {
		return
	}
	if owner := metav1.GetControllerOf(claim); owner != nil && owner.Kind == "Pool" && replica.IsAvailable(claim) {
		c.queue.Add(claim.Namespace + "/" + owner.Name)
	}
	waiting, _ := c.indexer.ByIndex(byClaim, claim.Namespace+"/"+claim.Name)
	for _, obj := range waiting {
		c.queue.Add(handout.PoolKey(obj.(*v1alpha1.Checkout)))
	}
}

// needsWork tells whether a checkout waits for a volume, holds one whose claim is gone, or holds a
// claim the PV controller marked Lost. The last happens when kube-controller-manager sees the bound
// claim before the volume's new claimRef reaches its cache (event ClaimMisbound); it sets such a claim
// Bound again only on its next periodic resync, so the handout, finding the volume bound to the
// claim, does that at once.
func (c *Controller) needsWork(checkout *v1alpha1.Checkout) bool {
	if checkout.DeletionTimestamp != nil {
		return false
	}
	if !handout.IsAcquired(checkout) {
		return true
	}
	claim, err := c.claims.PersistentVolumeClaims(checkout.Namespace).Get(checkout.Status.VolumeClaimRef.Name)
	if apierrors.IsNotFound(err) {
		return true
	}
	return err == nil && (!metav1.IsControlledBy(claim, checkout) || claim.Status.Phase == corev1.ClaimLost)
}

// WaitingAhead tells whether checkouts of the same pool created before checkout are waiting, so the
// synchronous path does not serve a newcomer before them.
func (c *Controller) WaitingAhead(checkout *v1alpha1.Checkout) bool {
	return WaitingAhead(c.indexer, checkout)
}

// WaitingAhead is Controller.WaitingAhead on an indexer that has AddIndexers' indexes. Only checkouts
// whose status records that they wait count: one whose create request is still handing out is not
// waiting, and competes for the pool's replicas like this one.
func WaitingAhead(indexer cache.Indexer, checkout *v1alpha1.Checkout) bool {
	others, err := indexer.ByIndex(byPool, handout.PoolKey(checkout))
	if err != nil {
		return false
	}
	for _, obj := range others {
		other := obj.(*v1alpha1.Checkout)
		if other.UID == checkout.UID || other.DeletionTimestamp != nil || !handout.IsWaiting(other) {
			continue
		}
		if other.CreationTimestamp.Before(&checkout.CreationTimestamp) {
			return true
		}
	}
	return false
}

// Run serves until ctx is done.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer c.queue.ShutDown()
	logger := klog.FromContext(ctx)
	logger.Info("Starting checkout controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	for i := 0; i < workers; i++ {
		go wait.UntilWithContext(ctx, c.runWorker, time.Second)
	}
	go wait.UntilWithContext(ctx, c.resync, resyncPeriod)
	<-ctx.Done()
	logger.Info("Stopping checkout controller")
}

// resync queues every pool with a checkout needing work, and a release pass.
func (c *Controller) resync(ctx context.Context) {
	c.queue.Add(releaseKey)
	checkouts, err := c.checkouts.List(labels.Everything())
	if err != nil {
		return
	}
	for _, checkout := range checkouts {
		c.enqueueCheckout(checkout)
	}
}

func (c *Controller) runWorker(ctx context.Context) {
	for c.processNext(ctx) {
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(key)
	var err error
	if key == releaseKey {
		err = c.handout.ReleaseAbandoned(ctx)
	} else {
		err = c.servePool(ctx, key)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Retrying", "key", key)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// servePool hands volumes to the pool's checkouts that need one, oldest first, until the pool runs
// out; the ones after that are recorded as waiting behind it.
func (c *Controller) servePool(ctx context.Context, poolKey string) error {
	objs, err := c.indexer.ByIndex(byPool, poolKey)
	if err != nil {
		return err
	}
	var pending []*v1alpha1.Checkout
	for _, obj := range objs {
		if checkout := obj.(*v1alpha1.Checkout); c.needsWork(checkout) {
			pending = append(pending, checkout)
		}
	}
	handout.WaitingOrder(pending)
	exhausted := false
	for _, checkout := range pending {
		outcome, err := c.handout.Acquire(ctx, checkout, exhausted)
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			// The checkout changed or went away since the cache saw it; its event brings it back.
			continue
		}
		if err != nil {
			return fmt.Errorf("handing out to checkout %s/%s: %w", checkout.Namespace, checkout.Name, err)
		}
		if outcome.Reason == "NotAvailable" || outcome.Reason == "PoolDoesNotExist" {
			exhausted = true
		}
	}
	return nil
}
