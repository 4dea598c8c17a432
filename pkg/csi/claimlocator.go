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

// ClaimLocator finds a backing claim's filesystem through the Kubernetes API: claim -> bound
// PersistentVolume -> its directory on the node (local and hostPath volumes), seen through HostRoot, where
// the host's root filesystem is mounted in the plugin's container. Claims without a name are served from
// Fallback (the --backing-dir). Volumes of other types (NFS, CSI) need the "pods that mount the claim"
// mechanism, which can implement BackingLocator the same way.
type ClaimLocator struct {
	Client     kubernetes.Interface
	HostRoot   string
	DriverName string
	Fallback   string
	// CacheFile, when set, persists resolved claims so a restarted plugin can still reach (and delete)
	// volumes whose backing claim is gone.
	CacheFile string

	mu     sync.Mutex
	loaded bool
	// resolved remembers claims, so volumes stay reachable while their claim is briefly unavailable.
	resolved map[BackingClaim]string
}

// Root implements BackingLocator.
func (l *ClaimLocator) Root(ctx context.Context, claim BackingClaim) (string, error) {
	if claim.Name == "" {
		if l.Fallback == "" {
			return "", errors.New("no backing claim given and no --backing-dir configured")
		}
		return l.Fallback, nil
	}
	dir, err := l.resolve(ctx, claim)
	if err != nil {
		l.mu.Lock()
		l.loadLocked()
		cached, ok := l.resolved[claim]
		l.mu.Unlock()
		if ok {
			klog.FromContext(ctx).V(2).Info("Using cached location of backing claim", "claim", claim, "dir", cached, "err", err.Error())
			return cached, nil
		}
		return "", err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loadLocked()
	if l.resolved[claim] != dir {
		l.resolved[claim] = dir
		l.saveLocked(ctx)
	}
	return dir, nil
}

type cachedClaim struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Dir       string `json:"dir"`
}

func (l *ClaimLocator) loadLocked() {
	if l.resolved == nil {
		l.resolved = map[BackingClaim]string{}
	}
	if l.loaded || l.CacheFile == "" {
		return
	}
	l.loaded = true
	var entries []cachedClaim
	if ok, err := readJSON(l.CacheFile, &entries); err != nil || !ok {
		return
	}
	for _, e := range entries {
		l.resolved[BackingClaim{Namespace: e.Namespace, Name: e.Name}] = e.Dir
	}
}

func (l *ClaimLocator) saveLocked(ctx context.Context) {
	if l.CacheFile == "" {
		return
	}
	var entries []cachedClaim
	for c, dir := range l.resolved {
		entries = append(entries, cachedClaim{Namespace: c.Namespace, Name: c.Name, Dir: dir})
	}
	err := os.MkdirAll(filepath.Dir(l.CacheFile), 0o755)
	if err == nil {
		err = writeJSONAtomic(l.CacheFile, entries)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Saving backing claim locations failed", "file", l.CacheFile)
	}
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
	var path string
	switch {
	case pv.Spec.Local != nil:
		path = pv.Spec.Local.Path
	case pv.Spec.HostPath != nil:
		path = pv.Spec.HostPath.Path
	default:
		return "", fmt.Errorf("backing volume %s is neither local nor hostPath; mount it on every node and use --backing-dir", pv.Name)
	}
	return filepath.Join(l.HostRoot, path), nil
}

// Roots implements BackingLocator: the fallback directory and the claims of this driver's StorageClasses.
func (l *ClaimLocator) Roots(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	var roots []string
	add := func(dir string) {
		if dir != "" && !seen[dir] {
			seen[dir] = true
			roots = append(roots, dir)
		}
	}
	add(l.Fallback)
	classes, err := l.Client.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, sc := range classes.Items {
		if sc.Provisioner != l.DriverName {
			continue
		}
		loc, err := parseParameters(sc.Parameters)
		if err != nil || loc.Claim.Name == "" {
			continue
		}
		if dir, err := l.Root(ctx, loc.Claim); err == nil {
			add(dir)
		}
	}
	l.mu.Lock()
	l.loadLocked()
	for _, dir := range l.resolved {
		add(dir)
	}
	l.mu.Unlock()
	return roots, nil
}
