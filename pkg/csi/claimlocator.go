package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// ClaimLocator finds a backing claim's filesystem through the Kubernetes API alone: claim -> bound
// PersistentVolume -> its directory on the node (local and hostPath volumes), seen through HostRoot, where
// the host's root filesystem is mounted. It needs no pods, so it suits a plugin running as a host process
// (--backing-access=path); BackingPods reaches any volume type through pods that mount the claim. Claims
// without a name are served from Fallback (the --backing-dir).
type ClaimLocator struct {
	Client     kubernetes.Interface
	HostRoot   string
	DriverName string
	Fallback   string
	// CacheFile, when set, persists resolved claims so a restarted plugin can still reach (and delete)
	// volumes whose backing claim is gone.
	CacheFile string

	cacheOnce sync.Once
	cache     *claimDirCache
}

func (l *ClaimLocator) dirCache() *claimDirCache {
	l.cacheOnce.Do(func() { l.cache = &claimDirCache{file: l.CacheFile} })
	return l.cache
}

// Root implements BackingLocator.
func (l *ClaimLocator) Root(ctx context.Context, claim BackingClaim) (string, error) {
	if claim.Name == "" {
		return fallbackRoot(l.Fallback)
	}
	dir, err := l.resolve(ctx, claim)
	if err != nil {
		if cached, ok := l.dirCache().get(claim); ok {
			klog.FromContext(ctx).V(2).Info("Using cached location of backing claim", "claim", claim, "dir", cached, "err", err.Error())
			return cached, nil
		}
		return "", err
	}
	l.dirCache().put(ctx, claim, dir)
	return dir, nil
}

func fallbackRoot(fallback string) (string, error) {
	if fallback == "" {
		return "", errors.New("no backing claim given and no --backing-dir configured")
	}
	return fallback, nil
}

func (l *ClaimLocator) resolve(ctx context.Context, claim BackingClaim) (string, error) {
	pvc, err := l.Client.CoreV1().PersistentVolumeClaims(claim.Namespace).Get(ctx, claim.Name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("backing claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
		return "", fmt.Errorf("backing claim %s/%s is not bound", claim.Namespace, claim.Name)
	}
	pv, err := l.Client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("volume %s of backing claim %s/%s: %w", pvc.Spec.VolumeName, claim.Namespace, claim.Name, err)
	}
	path := hostDirOf(pv)
	if path == "" {
		return "", fmt.Errorf("backing volume %s is neither local nor hostPath; use --backing-access=pods, or mount it on every node and use --backing-dir", pv.Name)
	}
	return filepath.Join(l.HostRoot, path), nil
}

// hostDirOf returns the node directory of a local or hostPath volume, "" for other types.
func hostDirOf(pv *corev1.PersistentVolume) string {
	switch {
	case pv.Spec.Local != nil:
		return pv.Spec.Local.Path
	case pv.Spec.HostPath != nil:
		return pv.Spec.HostPath.Path
	}
	return ""
}

// Roots implements BackingLocator: the fallback directory and the claims of this driver's StorageClasses.
func (l *ClaimLocator) Roots(ctx context.Context) ([]string, error) {
	return classRoots(ctx, l.Client, l.DriverName, l.Fallback, l.Root, l.dirCache())
}

// classRoots lists the fallback directory, the roots of the claims named by driverName's StorageClasses
// that root can reach now, and the cached directories of the other claims (a claim found through a pod and
// cached under its host path would otherwise be listed twice).
func classRoots(ctx context.Context, client kubernetes.Interface, driverName, fallback string,
	root func(context.Context, BackingClaim) (string, error), cache *claimDirCache) ([]string, error) {
	seen := map[string]bool{}
	var roots []string
	add := func(dir string) {
		if dir != "" && !seen[dir] {
			seen[dir] = true
			roots = append(roots, dir)
		}
	}
	add(fallback)
	reached := map[BackingClaim]bool{}
	classes, err := client.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, sc := range classes.Items {
		if sc.Provisioner != driverName {
			continue
		}
		loc, err := parseParameters(sc.Parameters)
		if err != nil || loc.Claim.Name == "" {
			continue
		}
		if dir, err := root(ctx, loc.Claim); err == nil {
			reached[loc.Claim] = true
			add(dir)
		}
	}
	for claim, dir := range cache.all() {
		if !reached[claim] {
			add(dir)
		}
	}
	return roots, nil
}

// claimDirCache remembers where claims were found, in memory and, when file is set, on disk, so volumes
// stay reachable while their claim is unavailable or gone, also after a restart of the plugin.
type claimDirCache struct {
	file string

	mu     sync.Mutex
	loaded bool
	dirs   map[BackingClaim]string
}

type cachedClaim struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Dir       string `json:"dir"`
}

func (c *claimDirCache) get(claim BackingClaim) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loadLocked()
	dir, ok := c.dirs[claim]
	return dir, ok
}

func (c *claimDirCache) all() map[BackingClaim]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loadLocked()
	dirs := make(map[BackingClaim]string, len(c.dirs))
	for claim, dir := range c.dirs {
		dirs[claim] = dir
	}
	return dirs
}

func (c *claimDirCache) put(ctx context.Context, claim BackingClaim, dir string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loadLocked()
	if c.dirs[claim] == dir {
		return
	}
	c.dirs[claim] = dir
	if c.file == "" {
		return
	}
	var entries []cachedClaim
	for cl, d := range c.dirs {
		entries = append(entries, cachedClaim{Namespace: cl.Namespace, Name: cl.Name, Dir: d})
	}
	err := os.MkdirAll(filepath.Dir(c.file), 0o755)
	if err == nil {
		err = writeJSONAtomic(c.file, entries)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Saving backing claim locations failed", "file", c.file)
	}
}

func (c *claimDirCache) loadLocked() {
	if c.dirs == nil {
		c.dirs = map[BackingClaim]string{}
	}
	if c.loaded || c.file == "" {
		return
	}
	c.loaded = true
	var entries []cachedClaim
	if ok, err := readJSON(c.file, &entries); err != nil || !ok {
		return
	}
	for _, e := range entries {
		c.dirs[BackingClaim{Namespace: e.Namespace, Name: e.Name}] = e.Dir
	}
}
