package csi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
	"k8s.io/utils/clock"
)

// Labels and annotations of holder pods. Labels find a plugin's holders again (after a restart too);
// annotations keep the full names, which may be too long for label values.
const (
	holderManagedByLabel   = "app.kubernetes.io/managed-by"
	holderManagedBy        = "pvpool-csi"
	holderDriverLabel      = "pvpool.puppet.com/driver"
	holderNodeLabel        = "pvpool.puppet.com/node"
	holderComponentLabel   = "pvpool.puppet.com/component"
	holderClaimLabel       = "pvpool.puppet.com/backing-claim"
	holderClaimAnnotation  = "pvpool.puppet.com/backing-claim"
	holderClaimUIDAnnot    = "pvpool.puppet.com/backing-claim-uid"
	holderVolumeAnnotation = "pvpool.puppet.com/backing-volume"
	holderNodeAnnotation   = "pvpool.puppet.com/node"
	holderVolumeName       = "backing"
	holderMountPath        = "/backing"
)

// Defaults of BackingPods' timing.
const (
	DefaultHolderIdleTimeout   = 5 * time.Minute
	DefaultHolderStartTimeout  = 30 * time.Second
	DefaultHolderCheckInterval = 30 * time.Second
)

// BackingPods reaches a backing claim the way Subprovisioner did: through a pod that mounts it. For a
// claim used on this node it keeps one "holder" pod in the claim's namespace, pinned to this node, that
// mounts the claim and only sleeps (`pvpool-csi hold` from the plugin's own image). Kubelet mounts the
// claim's volume for it, whatever its type (NFS, CSI, local...), and the plugin uses the pod's volume
// directory, <KubeletDir>/pods/<pod UID>/volumes/<plugin>/<volume>, which it sees because kubelet's
// directory is mounted into its container with HostToContainer (or Bidirectional) propagation.
// hostPath volumes are not mounted there; they are used at their path under HostRoot, without a holder.
//
// Lifetime of a holder: created on first use (Root), found again by its deterministic name and labels
// after a restart. It is deleted when its claim is being deleted, is gone or was replaced, and when
// nothing used the claim for IdleTimeout; in both cases only once no volume of the claim is staged by
// this node (StageNodeID): qemu-storage-daemon keeps the images open through the holder's mount, and
// kubelet cannot unmount a busy filesystem. A holder of a claim that is being deleted is never created
// (kubelet would refuse to start it and it would block the deletion); a deleted holder is recreated on the
// next use. Node and controller services keep separate holders (Component), so that neither's
// collection pulls the filesystem from under the other.
//
// When the claim is gone or the API unreachable, a local or hostPath volume stays reachable through its
// cached directory under HostRoot (CacheFile), so a restarted plugin can still unstage and delete volumes.
type BackingPods struct {
	Client     kubernetes.Interface
	DriverName string
	// NodeName is the node this plugin runs on: its holders are pinned there.
	NodeName string
	// Component names the plugin's service ("node", "controller", "all"); each keeps its own holders.
	Component string
	// Image is the holders' image: the plugin's own, which has `pvpool-csi hold`.
	Image string
	// KubeletDir is kubelet's root directory as this process sees it.
	KubeletDir string
	// HostRoot is where the host's root filesystem is mounted here (hostPath volumes, cached directories).
	HostRoot string
	// Fallback serves claims without a name (StorageClasses without backingClaimName): the --backing-dir.
	Fallback string
	// CacheFile persists the directories of local and hostPath backing volumes.
	CacheFile string
	// StageNodeID is the CSI node ID of the node service in this process, "" if none: a holder stays while a
	// volume of its claim is staged by it.
	StageNodeID string
	// IdleTimeout, StartTimeout (how long Root waits for a holder to run) and CheckInterval (how often
	// holders are checked for idleness) default to the Default* constants.
	IdleTimeout   time.Duration
	StartTimeout  time.Duration
	CheckInterval time.Duration
	// Clock measures idleness; the real clock when nil.
	Clock clock.WithTicker

	initOnce   sync.Once
	cache      *claimDirCache
	claimLocks map[BackingClaim]chan struct{}
	queue      workqueue.TypedRateLimitingInterface[BackingClaim]
	mounter    mount.Interface

	mu       sync.Mutex
	lastUsed map[BackingClaim]time.Time
	holders  cache.Indexer
	watches  map[BackingClaim]func()
}

func (l *BackingPods) init() {
	l.initOnce.Do(func() {
		if l.IdleTimeout <= 0 {
			l.IdleTimeout = DefaultHolderIdleTimeout
		}
		if l.StartTimeout <= 0 {
			l.StartTimeout = DefaultHolderStartTimeout
		}
		if l.CheckInterval <= 0 {
			l.CheckInterval = DefaultHolderCheckInterval
		}
		if l.Clock == nil {
			l.Clock = clock.RealClock{}
		}
		l.cache = &claimDirCache{file: l.CacheFile}
		l.claimLocks = map[BackingClaim]chan struct{}{}
		l.lastUsed = map[BackingClaim]time.Time{}
		l.watches = map[BackingClaim]func(){}
		l.mounter = mount.New("")
		l.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[BackingClaim](),
			workqueue.TypedRateLimitingQueueConfig[BackingClaim]{Name: "backing-holders"})
	})
}

// lockClaim serializes the use and the collection of one claim's holder in this process.
func (l *BackingPods) lockClaim(ctx context.Context, claim BackingClaim) (func(), error) {
	l.mu.Lock()
	ch, ok := l.claimLocks[claim]
	if !ok {
		ch = make(chan struct{}, 1)
		l.claimLocks[claim] = ch
	}
	l.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, status.Errorf(codes.DeadlineExceeded, "waiting for another request on backing claim %s/%s: %v", claim.Namespace, claim.Name, ctx.Err())
	}
}

// HolderName is the name of the pod through which the plugin (driverName, component) on node reaches claim.
// It is a hash, so that concurrent requests, and plugin restarts, agree on one pod.
func HolderName(driverName, component, node string, claim BackingClaim) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{driverName, component, node, claim.Namespace, claim.Name}, "\x00")))
	return "pvpool-holder-" + hex.EncodeToString(sum[:10])
}

func (l *BackingPods) holderName(claim BackingClaim) string {
	return HolderName(l.DriverName, l.Component, l.NodeName, claim)
}

// labelValue keeps names that are valid label values and hashes the others.
func labelValue(s string) string {
	if len(validation.IsValidLabelValue(s)) == 0 {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "h-" + hex.EncodeToString(sum[:20])
}

// ownLabels select the holders of this plugin (driver, node and component).
func (l *BackingPods) ownLabels() labels.Set {
	return labels.Set{
		holderManagedByLabel: holderManagedBy,
		holderDriverLabel:    labelValue(l.DriverName),
		holderNodeLabel:      labelValue(l.NodeName),
		holderComponentLabel: labelValue(l.Component),
	}
}

func (l *BackingPods) newHolder(pvc *corev1.PersistentVolumeClaim) *corev1.Pod {
	claim := BackingClaim{Namespace: pvc.Namespace, Name: pvc.Name}
	podLabels := l.ownLabels()
	podLabels[holderClaimLabel] = labelValue(pvc.Name)
	no, yes := false, true
	nobody := int64(65534)
	grace := int64(5)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      l.holderName(claim),
			Namespace: pvc.Namespace,
			Labels:    podLabels,
			Annotations: map[string]string{
				holderClaimAnnotation:  pvc.Name,
				holderClaimUIDAnnot:    string(pvc.UID),
				holderVolumeAnnotation: pvc.Spec.VolumeName,
				holderNodeAnnotation:   l.NodeName,
			},
		},
		Spec: corev1.PodSpec{
			NodeName:                      l.NodeName,
			RestartPolicy:                 corev1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: &grace,
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			// Wherever the plugin runs, its holders must run too.
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			// No fsGroup: kubelet would change the ownership of the whole backing filesystem.
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   &yes,
				RunAsUser:      &nobody,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:            "hold",
				Image:           l.Image,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Args:            []string{"hold"},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
				},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: &no,
					ReadOnlyRootFilesystem:   &yes,
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: holderVolumeName, MountPath: holderMountPath}},
			}},
			Volumes: []corev1.Volume{{
				Name: holderVolumeName,
				VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
					ClaimName: pvc.Name}},
			}},
		},
	}
}

// Root implements BackingLocator.
func (l *BackingPods) Root(ctx context.Context, claim BackingClaim) (string, error) {
	if claim.Name == "" {
		return fallbackRoot(l.Fallback)
	}
	l.init()
	unlock, err := l.lockClaim(ctx, claim)
	if err != nil {
		return "", err
	}
	defer unlock()
	// Attempts count as use too, so a holder that is still starting is not collected as idle.
	l.markUsed(claim)
	dir, cacheUsable, err := l.resolve(ctx, claim)
	if err == nil {
		return dir, nil
	}
	if cached, ok := l.cache.get(claim); ok && cacheUsable {
		if _, statErr := os.Stat(cached); statErr == nil {
			klog.FromContext(ctx).V(2).Info("Using cached directory of backing claim", "claim", claim, "dir", cached, "err", err.Error())
			return cached, nil
		}
	}
	return "", err
}

// resolve finds claim's directory, through its holder where needed. cacheUsable says whether the claim is
// gone, being deleted or its state unknown, so that a cached directory may serve instead.
func (l *BackingPods) resolve(ctx context.Context, claim BackingClaim) (dir string, cacheUsable bool, err error) {
	pvc, err := l.Client.CoreV1().PersistentVolumeClaims(claim.Namespace).Get(ctx, claim.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", true, status.Errorf(codes.FailedPrecondition, "backing claim %s/%s does not exist", claim.Namespace, claim.Name)
	}
	if err != nil {
		return "", true, status.Errorf(codes.Unavailable, "backing claim %s/%s: %v", claim.Namespace, claim.Name, err)
	}
	if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
		return "", false, status.Errorf(codes.FailedPrecondition, "backing claim %s/%s is not bound", claim.Namespace, claim.Name)
	}
	if !hasAccessMode(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
		return "", false, status.Errorf(codes.FailedPrecondition, "backing claim %s/%s is not ReadWriteMany (access modes %v)", claim.Namespace, claim.Name, pvc.Spec.AccessModes)
	}
	if pvc.Spec.VolumeMode != nil && *pvc.Spec.VolumeMode == corev1.PersistentVolumeBlock {
		return "", false, status.Errorf(codes.FailedPrecondition, "backing claim %s/%s is a Block volume, not a Filesystem", claim.Namespace, claim.Name)
	}
	pv, err := l.Client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", true, status.Errorf(codes.Unavailable, "volume %s of backing claim %s/%s: %v", pvc.Spec.VolumeName, claim.Namespace, claim.Name, err)
	}
	if hostDir := hostDirOf(pv); hostDir != "" {
		l.cache.put(ctx, claim, filepath.Join(l.HostRoot, hostDir))
	}
	if pv.Spec.HostPath != nil {
		dir := filepath.Join(l.HostRoot, pv.Spec.HostPath.Path)
		if _, err := os.Stat(dir); err != nil {
			return "", false, status.Errorf(codes.Unavailable, "hostPath %s of backing volume %s: %v", pv.Spec.HostPath.Path, pv.Name, err)
		}
		return dir, false, nil
	}
	pod, err := l.runningHolder(ctx, pvc)
	if err != nil {
		return "", pvc.DeletionTimestamp != nil, err
	}
	dir, err = l.podVolumeDir(pod.UID, pv.Name)
	if err == nil {
		var mounted bool
		if mounted, err = l.mounter.IsMountPoint(dir); err == nil && !mounted {
			err = errors.New("not a mount point")
		}
	}
	if err != nil {
		return "", false, status.Errorf(codes.Unavailable, "backing claim %s/%s in holder pod %s/%s on node %s: volume %s: %v",
			claim.Namespace, claim.Name, pod.Namespace, pod.Name, l.NodeName, pv.Name, err)
	}
	return dir, false, nil
}

func hasAccessMode(modes []corev1.PersistentVolumeAccessMode, want corev1.PersistentVolumeAccessMode) bool {
	for _, m := range modes {
		if m == want {
			return true
		}
	}
	return false
}

// podVolumeDir is where kubelet mounted the volume pvName for the pod: pods/<uid>/volumes/<plugin>/<pvName>,
// the plugin's name escaped ("kubernetes.io~local-volume", "kubernetes.io~nfs"...); CSI volumes are
// mounted in its "mount" subdirectory.
func (l *BackingPods) podVolumeDir(podUID types.UID, pvName string) (string, error) {
	if podUID == "" || pvName == "" {
		return "", errors.New("no pod UID or volume name")
	}
	matches, err := filepath.Glob(filepath.Join(l.KubeletDir, "pods", string(podUID), "volumes", "*", pvName))
	if err != nil {
		return "", err
	}
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("not mounted under %s", filepath.Join(l.KubeletDir, "pods", string(podUID), "volumes"))
	case 1:
	default:
		return "", fmt.Errorf("mounted by several plugins: %v", matches)
	}
	if filepath.Base(filepath.Dir(matches[0])) == "kubernetes.io~csi" {
		return filepath.Join(matches[0], "mount"), nil
	}
	return matches[0], nil
}

// runningHolder returns claim's holder once it runs, creating it if needed. It waits at most StartTimeout
// (and never past ctx), then answers Unavailable naming the pod and why it does not run.
func (l *BackingPods) runningHolder(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (*corev1.Pod, error) {
	logger := klog.FromContext(ctx)
	pods := l.Client.CoreV1().Pods(pvc.Namespace)
	name := l.holderName(BackingClaim{Namespace: pvc.Namespace, Name: pvc.Name})
	var last *corev1.Pod
	var lastErr error
	waitCtx, cancel := context.WithTimeout(ctx, l.StartTimeout)
	defer cancel()
	var running *corev1.Pod
	err := wait.PollUntilContextCancel(waitCtx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		pod, err := pods.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if pvc.DeletionTimestamp != nil {
				return false, status.Errorf(codes.FailedPrecondition, "backing claim %s/%s is being deleted", pvc.Namespace, pvc.Name)
			}
			pod, err = pods.Create(ctx, l.newHolder(pvc), metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return false, nil
			}
			if err == nil {
				logger.Info("Created backing claim holder", "pod", klog.KObj(pod), "claim", klog.KObj(pvc), "node", l.NodeName)
			}
		}
		if err != nil {
			lastErr = err
			return false, nil
		}
		last, lastErr = pod, nil
		if pod.DeletionTimestamp != nil {
			return false, nil
		}
		retire := ""
		switch {
		case pod.Annotations[holderClaimUIDAnnot] != string(pvc.UID):
			retire = "its claim was replaced"
		case pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded:
			retire = "it ended"
		}
		if retire != "" {
			logger.Info("Deleting backing claim holder", "pod", klog.KObj(pod), "reason", retire)
			if err := deleteHolder(ctx, l.Client, pod); err != nil {
				lastErr = err
			}
			return false, nil
		}
		if pod.Status.Phase == corev1.PodRunning {
			running = pod
			return true, nil
		}
		return false, nil
	})
	if running != nil {
		return running, nil
	}
	if st, ok := status.FromError(err); ok && err != nil && st.Code() != codes.Unknown {
		return nil, err
	}
	switch {
	case last != nil:
		return nil, status.Errorf(codes.Unavailable, "backing claim %s/%s: holder pod %s/%s on node %s is not running yet: %s",
			pvc.Namespace, pvc.Name, pvc.Namespace, name, l.NodeName, describePod(last))
	case lastErr != nil:
		return nil, status.Errorf(codes.Unavailable, "backing claim %s/%s: holder pod %s/%s on node %s: %v",
			pvc.Namespace, pvc.Name, pvc.Namespace, name, l.NodeName, lastErr)
	default:
		return nil, status.Errorf(codes.Unavailable, "backing claim %s/%s: holder pod %s/%s on node %s: %v",
			pvc.Namespace, pvc.Name, pvc.Namespace, name, l.NodeName, err)
	}
}

// describePod says why a pod does not run, as far as its status tells.
func describePod(pod *corev1.Pod) string {
	parts := []string{"phase " + string(pod.Status.Phase)}
	if pod.DeletionTimestamp != nil {
		parts = append(parts, "terminating")
	}
	for _, c := range pod.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			parts = append(parts, fmt.Sprintf("%s: %s", c.Type, c.Message))
		}
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			parts = append(parts, strings.TrimSpace(fmt.Sprintf("container %s: %s %s", cs.Name, w.Reason, w.Message)))
		}
	}
	return strings.Join(parts, "; ")
}

func deleteHolder(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod) error {
	err := client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func (l *BackingPods) markUsed(claim BackingClaim) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastUsed[claim] = l.Clock.Now()
}

// Roots implements BackingLocator: the fallback directory, the claims of this driver's StorageClasses and
// the cached directories.
func (l *BackingPods) Roots(ctx context.Context) ([]string, error) {
	l.init()
	return classRoots(ctx, l.Client, l.DriverName, l.Fallback, l.Root, l.cache)
}

// Run collects holders (see BackingPods) until ctx ends: it watches this plugin's holders and their
// claims, and checks every CheckInterval for idle ones.
func (l *BackingPods) Run(ctx context.Context) {
	l.init()
	logger := klog.FromContext(ctx).WithName("backing-holders")
	ctx = klog.NewContext(ctx, logger)
	factory := informers.NewSharedInformerFactoryWithOptions(l.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = l.ownLabels().String()
	}))
	informer := factory.Core().V1().Pods().Informer()
	enqueue := func(obj interface{}) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Annotations[holderClaimAnnotation] == "" {
			return
		}
		claim := BackingClaim{Namespace: pod.Namespace, Name: pod.Annotations[holderClaimAnnotation]}
		l.mu.Lock()
		// A holder found after a restart gets a full idle period.
		if _, ok := l.lastUsed[claim]; !ok {
			l.lastUsed[claim] = l.Clock.Now()
		}
		l.mu.Unlock()
		l.queue.Add(claim)
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj interface{}) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		logger.Error(err, "Watching holder pods failed")
		return
	}
	l.mu.Lock()
	l.holders = informer.GetIndexer()
	l.mu.Unlock()
	factory.Start(ctx.Done())
	defer func() {
		l.queue.ShutDown()
		factory.Shutdown()
		l.mu.Lock()
		for claim, stop := range l.watches {
			stop()
			delete(l.watches, claim)
		}
		l.mu.Unlock()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return
	}
	go func() {
		ticker := l.Clock.NewTicker(l.CheckInterval)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C():
				for _, obj := range informer.GetStore().List() {
					enqueue(obj)
				}
			}
		}
	}()
	go func() {
		<-ctx.Done()
		l.queue.ShutDown()
	}()
	for {
		claim, shutdown := l.queue.Get()
		if shutdown {
			return
		}
		if err := l.reconcile(ctx, claim); err != nil {
			logger.Error(err, "Checking backing claim holder failed", "claim", klog.KRef(claim.Namespace, claim.Name))
			l.queue.AddRateLimited(claim)
		} else {
			l.queue.Forget(claim)
		}
		l.queue.Done(claim)
	}
}

// reconcile deletes claim's holder when it is no longer needed, and watches the claim while it has one.
func (l *BackingPods) reconcile(ctx context.Context, claim BackingClaim) error {
	logger := klog.FromContext(ctx)
	obj, exists, err := l.holders.GetByKey(claim.Namespace + "/" + l.holderName(claim))
	if err != nil {
		return err
	}
	if !exists {
		l.unwatchClaim(claim)
		return nil
	}
	pod := obj.(*corev1.Pod)
	l.watchClaim(ctx, claim)
	if pod.DeletionTimestamp != nil {
		return nil
	}
	unlock, err := l.lockClaim(ctx, claim)
	if err != nil {
		return err
	}
	defer unlock()
	reason, err := l.retireReason(ctx, claim, pod)
	if reason == "" || err != nil {
		return err
	}
	if staged, where := l.stagedHere(pod); staged {
		logger.V(2).Info("Keeping backing claim holder: a volume of the claim is staged on this node", "pod", klog.KObj(pod),
			"reason", reason, "store", where)
		return nil
	}
	if err := deleteHolder(ctx, l.Client, pod); err != nil {
		return err
	}
	logger.Info("Deleted backing claim holder", "pod", klog.KObj(pod), "claim", klog.KRef(claim.Namespace, claim.Name), "reason", reason)
	return nil
}

// retireReason says why pod, claim's holder, should go, "" when it is still needed.
func (l *BackingPods) retireReason(ctx context.Context, claim BackingClaim, pod *corev1.Pod) (string, error) {
	pvc, err := l.Client.CoreV1().PersistentVolumeClaims(claim.Namespace).Get(ctx, claim.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return "claim deleted", nil
	case err != nil:
		return "", err
	case pvc.DeletionTimestamp != nil:
		return "claim is being deleted", nil
	case string(pvc.UID) != pod.Annotations[holderClaimUIDAnnot]:
		return "claim was replaced", nil
	}
	l.mu.Lock()
	idle := l.Clock.Since(l.lastUsed[claim])
	l.mu.Unlock()
	if idle >= l.IdleTimeout {
		return fmt.Sprintf("unused for %s", idle.Round(time.Second)), nil
	}
	return "", nil
}

// stagedHere says whether a volume staged by this plugin's node service lives in the holder's filesystem,
// and in which store. When unsure it says yes: a holder deleted under a staged volume hangs in Terminating.
func (l *BackingPods) stagedHere(pod *corev1.Pod) (bool, string) {
	if l.StageNodeID == "" {
		return false, ""
	}
	dir, err := l.podVolumeDir(pod.UID, pod.Annotations[holderVolumeAnnotation])
	if err != nil {
		// Nothing mounted, so nothing can be staged through it.
		return false, ""
	}
	return stagedBy(dir, l.StageNodeID)
}

// stagedBy looks for stage records of nodeID in the stores under root (as Driver.stores finds them). A
// store it cannot read counts as staged: a holder is only collected when that is sure.
func stagedBy(root, nodeID string) (bool, string) {
	record := keyFor(nodeID) + ".json"
	where := ""
	err := walkStores(root, false, func(dir string) error {
		entries, err := os.ReadDir(filepath.Join(dir, volumesDirName))
		if err != nil {
			return err
		}
		for _, v := range entries {
			if !v.IsDir() || !strings.HasSuffix(v.Name(), ".staged") {
				continue
			}
			if _, err := os.Stat(filepath.Join(dir, volumesDirName, v.Name(), record)); err == nil {
				where = dir
				return filepath.SkipAll
			}
		}
		return nil
	})
	if err != nil {
		return true, err.Error()
	}
	return where != "", where
}

// watchClaim starts watching claim, so its deletion reaches reconcile at once.
func (l *BackingPods) watchClaim(ctx context.Context, claim BackingClaim) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.watches[claim]; ok {
		return
	}
	factory := informers.NewSharedInformerFactoryWithOptions(l.Client, 0, informers.WithNamespace(claim.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", claim.Name).String()
		}))
	enqueue := func(obj interface{}) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if pvc, ok := obj.(*corev1.PersistentVolumeClaim); ok && pvc.Name == claim.Name {
			l.queue.Add(claim)
		}
	}
	informer := factory.Core().V1().PersistentVolumeClaims().Informer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj interface{}) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		klog.FromContext(ctx).Error(err, "Watching backing claim failed", "claim", klog.KRef(claim.Namespace, claim.Name))
		return
	}
	stop := make(chan struct{})
	factory.Start(stop)
	l.watches[claim] = func() {
		close(stop)
		go factory.Shutdown()
	}
}

func (l *BackingPods) unwatchClaim(claim BackingClaim) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if stop, ok := l.watches[claim]; ok {
		stop()
		delete(l.watches, claim)
	}
}
