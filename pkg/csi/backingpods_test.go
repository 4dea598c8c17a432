package csi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
)

const testNode = "node-1"

type backingFixture struct {
	client  *fake.Clientset
	kubelet string
	host    string
	clock   *clocktesting.FakeClock
	claim   BackingClaim
	// claimWatches counts watches of claims registered with the fake's tracker. The fake cannot resume
	// a watch from a resourceVersion, so a change made between an informer's list and its watch is
	// never delivered; tests wait for the watch before changing the claim.
	claimWatches atomic.Int32
}

func newBackingFixture(t *testing.T, pvSource corev1.PersistentVolumeSource, modes ...corev1.PersistentVolumeAccessMode) *backingFixture {
	t.Helper()
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}
	}
	f := &backingFixture{
		client: fake.NewClientset(
			&corev1.PersistentVolumeClaim{
				ObjectMeta: metav1.ObjectMeta{Namespace: "storage", Name: "backing", UID: "claim-uid-1"},
				Spec:       corev1.PersistentVolumeClaimSpec{VolumeName: "pv-backing", AccessModes: modes},
				Status:     corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
			},
			&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-backing"},
				Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: pvSource, AccessModes: modes}},
		),
		kubelet: t.TempDir(),
		host:    t.TempDir(),
		clock:   clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		claim:   BackingClaim{Namespace: "storage", Name: "backing"},
	}
	f.client.PrependWatchReactor("persistentvolumeclaims", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := f.client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err == nil {
			f.claimWatches.Add(1)
		}
		return true, w, err
	})
	return f
}

// waitClaimWatched waits until n watches of claims are registered.
func (f *backingFixture) waitClaimWatched(t *testing.T, n int32) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return f.claimWatches.Load() >= n, nil
	})
	if err != nil {
		t.Fatalf("%d of %d claim watches registered", f.claimWatches.Load(), n)
	}
}

func (f *backingFixture) locator(component string) *BackingPods {
	l := &BackingPods{Client: f.client, DriverName: DefaultDriverName, NodeName: testNode, Component: component,
		Image: "pvpool-csi:test", KubeletDir: f.kubelet, HostRoot: f.host,
		CacheFile: filepath.Join(f.host, component+"-cache.json"), StartTimeout: 50 * time.Millisecond,
		IdleTimeout: time.Hour, CheckInterval: time.Minute, Clock: f.clock}
	if component == "node" {
		l.StageNodeID = testNode
	}
	return l
}

func (f *backingFixture) holderName(component string) string {
	return HolderName(DefaultDriverName, component, testNode, f.claim)
}

func (f *backingFixture) holder(t *testing.T, component string) *corev1.Pod {
	t.Helper()
	pod, err := f.client.CoreV1().Pods(f.claim.Namespace).Get(context.Background(), f.holderName(component), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("holder pod: %v", err)
	}
	return pod
}

// startHolder plays kubelet: the holder gets a UID and runs, with the backing volume mounted at
// pods/<uid>/volumes/<pluginDir>/pv-backing[/mount] (a bind mount of a fresh directory).
func (f *backingFixture) startHolder(t *testing.T, component, pluginDir string) (podDir string) {
	t.Helper()
	pod := f.holder(t, component)
	pod.UID = types.UID("uid-" + component)
	pod.Status.Phase = corev1.PodRunning
	if _, err := f.client.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.kubelet, "pods", string(pod.UID), "volumes", pluginDir, "pv-backing")
	if pluginDir == "kubernetes.io~csi" {
		dir = filepath.Join(dir, "mount")
	}
	bindMount(t, t.TempDir(), dir)
	return dir
}

func bindMount(t *testing.T, source, target string) {
	t.Helper()
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount %s on %s: %v", source, target, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for bind mounts")
	}
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), contains) {
		t.Fatalf("error %v, want code %v containing %q", err, code, contains)
	}
}

func TestBackingPodsHolderOnceThenRunning(t *testing.T) {
	requireRoot(t)
	ctx := t.Context()
	f := newBackingFixture(t, corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/srv/backing"}})
	l := f.locator("node")
	name := f.holderName("node")

	// Concurrent first uses: one pod is created, and everyone is told it does not run yet.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = l.Root(ctx, f.claim)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		wantCode(t, err, codes.Unavailable, name)
	}
	// Another process (the same plugin restarted, or racing) agrees on the name and creates nothing new.
	if _, err := f.locator("node").Root(ctx, f.claim); status.Code(err) != codes.Unavailable {
		t.Fatalf("second locator: %v", err)
	}
	creates := 0
	for _, a := range f.client.Actions() {
		if a.GetVerb() == "create" && a.GetResource().Resource == "pods" {
			creates++
		}
	}
	pods, err := f.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if creates != 1 || len(pods.Items) != 1 {
		t.Fatalf("%d pod creations, %d pods; want one holder", creates, len(pods.Items))
	}
	pod := pods.Items[0]
	if pod.Name != name || pod.Namespace != "storage" || pod.Spec.NodeName != testNode ||
		pod.Spec.Containers[0].Image != "pvpool-csi:test" || strings.Join(pod.Spec.Containers[0].Args, " ") != "hold" {
		t.Errorf("holder pod %s/%s on %q runs %s %v", pod.Namespace, pod.Name, pod.Spec.NodeName, pod.Spec.Containers[0].Image, pod.Spec.Containers[0].Args)
	}
	if src := pod.Spec.Volumes[0].PersistentVolumeClaim; src == nil || src.ClaimName != "backing" || src.ReadOnly {
		t.Errorf("holder volume %+v, want the claim read-write", pod.Spec.Volumes[0])
	}
	if pod.Labels[holderManagedByLabel] != "pvpool-csi" || pod.Labels[holderClaimLabel] != "backing" || pod.Labels[holderNodeLabel] != testNode {
		t.Errorf("holder labels %v", pod.Labels)
	}
	if pod.Spec.SecurityContext.FSGroup != nil {
		t.Error("holder sets fsGroup: kubelet would chown the whole backing filesystem")
	}

	// Running, but kubelet has not mounted the volume: still unavailable.
	pod.UID = "uid-node"
	pod.Status.Phase = corev1.PodRunning
	if _, err := f.client.CoreV1().Pods("storage").UpdateStatus(ctx, &pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.kubelet, "pods", "uid-node", "volumes", "kubernetes.io~local-volume", "pv-backing")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = l.Root(ctx, f.claim)
	wantCode(t, err, codes.Unavailable, "not a mount point")

	bindMount(t, t.TempDir(), dir)
	got, err := l.Root(ctx, f.claim)
	if err != nil || got != dir {
		t.Fatalf("Root = %q, %v; want %s", got, err, dir)
	}
	// After a restart the running holder is found again.
	if got, err := f.locator("node").Root(ctx, f.claim); err != nil || got != dir {
		t.Fatalf("Root after restart = %q, %v; want %s", got, err, dir)
	}
}

func TestBackingPodsVolumeLayouts(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name      string
		source    corev1.PersistentVolumeSource
		pluginDir string
	}{
		{"csi", corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "nfs.csi.k8s.io", VolumeHandle: "x"}}, "kubernetes.io~csi"},
		{"local", corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/mnt/disk"}}, "kubernetes.io~local-volume"},
		{"nfs", corev1.PersistentVolumeSource{NFS: &corev1.NFSVolumeSource{Server: "nfs", Path: "/export"}}, "kubernetes.io~nfs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newBackingFixture(t, tc.source)
			l := f.locator("controller")
			if _, err := l.Root(t.Context(), f.claim); status.Code(err) != codes.Unavailable {
				t.Fatalf("first Root: %v", err)
			}
			want := f.startHolder(t, "controller", tc.pluginDir)
			if got, err := l.Root(t.Context(), f.claim); err != nil || got != want {
				t.Fatalf("Root = %q, %v; want %s", got, err, want)
			}
		})
	}
}

func TestBackingPodsHostPathNeedsNoHolder(t *testing.T) {
	f := newBackingFixture(t, corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/srv/host"}})
	want := filepath.Join(f.host, "srv/host")
	if err := os.MkdirAll(want, 0o755); err != nil {
		t.Fatal(err)
	}
	l := f.locator("node")
	if got, err := l.Root(t.Context(), f.claim); err != nil || got != want {
		t.Fatalf("Root = %q, %v; want %s", got, err, want)
	}
	if pods, _ := f.client.CoreV1().Pods("").List(t.Context(), metav1.ListOptions{}); len(pods.Items) != 0 {
		t.Errorf("hostPath backing volume got holder pods: %v", pods.Items)
	}
}

func TestBackingPodsRejectsUnusableClaims(t *testing.T) {
	f := newBackingFixture(t, corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/x"}}, corev1.ReadWriteOnce)
	_, err := f.locator("node").Root(t.Context(), f.claim)
	wantCode(t, err, codes.FailedPrecondition, "ReadWriteMany")

	f = newBackingFixture(t, corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/x"}})
	pvc, _ := f.client.CoreV1().PersistentVolumeClaims("storage").Get(t.Context(), "backing", metav1.GetOptions{})
	pvc.Status.Phase = corev1.ClaimPending
	if _, err := f.client.CoreV1().PersistentVolumeClaims("storage").UpdateStatus(t.Context(), pvc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = f.locator("node").Root(t.Context(), f.claim)
	wantCode(t, err, codes.FailedPrecondition, "not bound")

	_, err = f.locator("node").Root(t.Context(), BackingClaim{Namespace: "storage", Name: "missing"})
	wantCode(t, err, codes.FailedPrecondition, "does not exist")
	if pods, _ := f.client.CoreV1().Pods("").List(t.Context(), metav1.ListOptions{}); len(pods.Items) != 0 {
		t.Errorf("unusable claims got holder pods: %v", pods.Items)
	}
}

// markDeleting gives the backing claim a deletionTimestamp, as kube-apiserver does while pvc-protection
// holds it.
func (f *backingFixture) markDeleting(t *testing.T) {
	t.Helper()
	pvc, err := f.client.CoreV1().PersistentVolumeClaims("storage").Get(t.Context(), "backing", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	pvc.DeletionTimestamp = &now
	pvc.Finalizers = []string{"kubernetes.io/pvc-protection"}
	if _, err := f.client.CoreV1().PersistentVolumeClaims("storage").Update(t.Context(), pvc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (f *backingFixture) waitHolderGone(t *testing.T, component string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := f.client.CoreV1().Pods("storage").Get(ctx, f.holderName(component), metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("holder %s not deleted: %v", f.holderName(component), err)
	}
}

// runCollector runs l's collection and returns once it watches the holders and waits for its next check.
func runCollector(t *testing.T, l *BackingPods, clock *clocktesting.FakeClock) {
	t.Helper()
	tickers := clock.Waiters()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.holders != nil && len(l.holders.List()) > 0 && clock.Waiters() > tickers, nil
	})
	if err != nil {
		t.Fatal("collector does not see the holder")
	}
}

func TestBackingPodsHolderDeletedWithClaim(t *testing.T) {
	requireRoot(t)
	f := newBackingFixture(t, corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/srv/backing"}})
	node, controller := f.locator("node"), f.locator("controller")
	for _, l := range []*BackingPods{node, controller} {
		if _, err := l.Root(t.Context(), f.claim); status.Code(err) != codes.Unavailable {
			t.Fatal(err)
		}
	}
	nodeDir := f.startHolder(t, "node", "kubernetes.io~local-volume")
	f.startHolder(t, "controller", "kubernetes.io~local-volume")
	if _, err := node.Root(t.Context(), f.claim); err != nil {
		t.Fatal(err)
	}
	// A volume of the claim is staged on this node.
	stage := filepath.Join(nodeDir, "base", volumesDirName, "pvc-1.staged", testNode+".json")
	if err := os.MkdirAll(filepath.Dir(stage), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stage, []byte(`{"nodeID":"node-1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(f.host, "srv/backing"), 0o755); err != nil {
		t.Fatal(err)
	}
	runCollector(t, node, f.clock)
	runCollector(t, controller, f.clock)

	f.waitClaimWatched(t, 2)
	f.markDeleting(t)
	f.waitHolderGone(t, "controller")
	// The node's holder stays while the volume is staged through it...
	if err := node.reconcile(t.Context(), f.claim); err != nil {
		t.Fatal(err)
	}
	f.holder(t, "node")
	// ...and no new holder is made for a claim being deleted: the cached host directory of the local volume
	// serves instead.
	got, err := controller.Root(t.Context(), f.claim)
	if err != nil || got != filepath.Join(f.host, "srv/backing") {
		t.Fatalf("Root of a claim being deleted = %q, %v", got, err)
	}
	if _, err := f.client.CoreV1().Pods("storage").Get(t.Context(), f.holderName("controller"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("holder recreated for a claim being deleted: %v", err)
	}
	// Unstaged: the next check deletes the node's holder.
	if err := os.Remove(stage); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(time.Minute)
	f.waitHolderGone(t, "node")
}

func TestBackingPodsIdleHolderDeleted(t *testing.T) {
	requireRoot(t)
	f := newBackingFixture(t, corev1.PersistentVolumeSource{NFS: &corev1.NFSVolumeSource{Server: "nfs", Path: "/"}})
	l := f.locator("controller")
	if _, err := l.Root(t.Context(), f.claim); status.Code(err) != codes.Unavailable {
		t.Fatal(err)
	}
	f.startHolder(t, "controller", "kubernetes.io~nfs")
	if _, err := l.Root(t.Context(), f.claim); err != nil {
		t.Fatal(err)
	}
	runCollector(t, l, f.clock)
	f.clock.Step(30 * time.Minute)
	if err := l.reconcile(t.Context(), f.claim); err != nil {
		t.Fatal(err)
	}
	f.holder(t, "controller") // used half an hour ago: kept
	f.clock.Step(31 * time.Minute)
	f.waitHolderGone(t, "controller")
	// Recreated on the next use.
	if _, err := l.Root(t.Context(), f.claim); status.Code(err) != codes.Unavailable {
		t.Fatal(err)
	}
	f.holder(t, "controller")
}
