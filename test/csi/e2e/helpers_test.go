// Package e2e runs the Subprovisioner seed's scenarios against pvpool-csi on the local cluster, through
// the real sidecars. It runs when PVPOOL_E2E=1 and PVPOOL_E2E_KUBECONFIG point at a cluster made by
// hack/cluster/up.sh (hack/e2e.sh exports both); otherwise it skips.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	driverName    = "subprovisioner.gitlab.io"
	seedClass     = "my-storage-class"
	snapshotClass = "subprovisioner"
	busybox       = "docker.io/library/busybox:stable-musl"
	csiImage      = "docker.io/pvpool/pvpool-csi:dev"
	mi            = int64(1) << 20
	timeout       = 3 * time.Minute
)

var (
	snapshotGVR = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
	contentGVR  = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}
)

type cluster struct {
	client  kubernetes.Interface
	dynamic dynamic.Interface
}

func requireCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Getenv("PVPOOL_E2E") != "1" {
		t.Skip("set PVPOOL_E2E=1 and PVPOOL_E2E_KUBECONFIG (hack/e2e.sh does) to run against the local cluster")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("PVPOOL_E2E_KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{client: kubernetes.NewForConfigOrDie(cfg), dynamic: dynamic.NewForConfigOrDie(cfg)}
	if _, err := c.client.StorageV1().CSIDrivers().Get(t.Context(), driverName, metav1.GetOptions{}); err != nil {
		t.Fatalf("CSIDriver %s is not deployed (artifacts/csi): %v", driverName, err)
	}
	return c
}

func suffix(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func (c *cluster) namespace(t *testing.T, prefix string) string {
	t.Helper()
	ns, err := c.client.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		// Claims first and waited for, so their volumes are deleted by the driver before the test ends.
		_ = c.client.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = c.dynamic.Resource(snapshotGVR).Namespace(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = c.client.CoreV1().PersistentVolumeClaims(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
			pvs, err := c.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			for _, pv := range pvs.Items {
				if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == ns.Name && pv.Spec.CSI != nil {
					return false, nil
				}
			}
			return true, nil
		})
		_ = c.client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

type claimSpec struct {
	name, class string
	// static binds to a pre-created volume (empty storage class).
	static bool
	size   int64
	block  bool
	modes  []corev1.PersistentVolumeAccessMode
	source *corev1.TypedLocalObjectReference
}

func (c *cluster) createClaim(t *testing.T, ns string, s claimSpec) *corev1.PersistentVolumeClaim {
	t.Helper()
	mode := corev1.PersistentVolumeFilesystem
	if s.block {
		mode = corev1.PersistentVolumeBlock
	}
	if s.class == "" && !s.static {
		s.class = seedClass
	}
	if len(s.modes) == 0 {
		s.modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: s.name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      s.modes,
			VolumeMode:       &mode,
			StorageClassName: &s.class,
			DataSource:       s.source,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: *resource.NewQuantity(s.size, resource.BinarySI)}},
		},
	}
	created, err := c.client.CoreV1().PersistentVolumeClaims(ns).Create(t.Context(), pvc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

func (c *cluster) waitBound(t *testing.T, ns, name string) *corev1.PersistentVolumeClaim {
	t.Helper()
	var pvc *corev1.PersistentVolumeClaim
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var err error
		pvc, err = c.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && pvc.Status.Phase == corev1.ClaimBound, nil
	})
	if err != nil {
		c.dumpEvents(t, ns)
		t.Fatalf("claim %s/%s not bound: %v (phase %v)", ns, name, err, pvc.Status.Phase)
	}
	return pvc
}

func (c *cluster) deleteClaim(t *testing.T, ns, name string) {
	t.Helper()
	pvc, err := c.client.CoreV1().PersistentVolumeClaims(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.client.CoreV1().PersistentVolumeClaims(ns).Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitGone(t, func(ctx context.Context) error {
		_, err := c.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		return err
	}, "volume "+pvc.Spec.VolumeName)
}

func (c *cluster) waitGone(t *testing.T, get func(context.Context) error, what string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		return apierrors.IsNotFound(get(ctx)), nil
	})
	if err != nil {
		t.Fatalf("%s not deleted: %v", what, err)
	}
}

type podVolume struct {
	claim    string
	path     string // device path for block claims, mount path otherwise
	block    bool
	readOnly bool
}

func podSpec(name, image, script string, vols []podVolume) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "main", Image: image, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", "set -e; " + script}}},
		},
	}
	if image == csiImage {
		pod.Spec.Containers[0].Command = []string{"/bin/busybox", "sh", "-c", "set -e; " + script}
	}
	for i, v := range vols {
		vn := fmt.Sprintf("v%d", i)
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: vn, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: v.claim, ReadOnly: v.readOnly}}})
		if v.block {
			pod.Spec.Containers[0].VolumeDevices = append(pod.Spec.Containers[0].VolumeDevices, corev1.VolumeDevice{Name: vn, DevicePath: v.path})
		} else {
			pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: vn, MountPath: v.path, ReadOnly: v.readOnly})
		}
	}
	return pod
}

// run runs script in a pod to completion and returns its output; the pod is deleted afterwards so its
// volumes are unstaged.
func (c *cluster) run(t *testing.T, ns, image, script string, vols ...podVolume) string {
	t.Helper()
	name := "run-" + suffix(t)
	if _, err := c.client.CoreV1().Pods(ns).Create(t.Context(), podSpec(name, image, script, vols), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.deletePod(t, ns, name)
	var phase corev1.PodPhase
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pod, err := c.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		phase = pod.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	logs, _ := c.client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(context.Background())
	if err != nil || phase != corev1.PodSucceeded {
		c.dumpEvents(t, ns)
		t.Fatalf("pod %s: phase %s, %v; output:\n%s", name, phase, err, logs)
	}
	return strings.TrimSpace(string(logs))
}

// start starts a long-running pod and waits until it runs.
func (c *cluster) start(t *testing.T, ns, name, script string, vols ...podVolume) {
	t.Helper()
	if _, err := c.client.CoreV1().Pods(ns).Create(t.Context(), podSpec(name, busybox, script, vols), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pod, err := c.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && pod.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		c.dumpEvents(t, ns)
		t.Fatalf("pod %s did not start: %v", name, err)
	}
}

func (c *cluster) deletePod(t *testing.T, ns, name string) {
	t.Helper()
	_ = c.client.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	c.waitGone(t, func(ctx context.Context) error {
		_, err := c.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err
	}, "pod "+name)
}

// holderPods returns the CSI plugin's holder pods of claim in ns, by component (node, controller), once
// none of them is terminating.
func (c *cluster) holderPods(t *testing.T, ns, claim string) map[string]*corev1.Pod {
	t.Helper()
	var holders map[string]*corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pods, err := c.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/managed-by=pvpool-csi,pvpool.puppet.com/backing-claim=" + claim})
		if err != nil {
			return false, nil
		}
		holders = map[string]*corev1.Pod{}
		for i := range pods.Items {
			pod := &pods.Items[i]
			if pod.DeletionTimestamp != nil {
				return false, nil
			}
			holders[pod.Labels["pvpool.puppet.com/component"]] = pod
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("holder pods of %s/%s: %v", ns, claim, err)
	}
	return holders
}

func (c *cluster) createSnapshot(t *testing.T, ns, name, claim string) {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]interface{}{
		"apiVersion": "snapshot.storage.k8s.io/v1",
		"kind":       "VolumeSnapshot",
		"metadata":   map[string]interface{}{"name": name},
		"spec": map[string]interface{}{
			"volumeSnapshotClassName": snapshotClass,
			"source":                  map[string]interface{}{"persistentVolumeClaimName": claim},
		},
	}}
	if _, err := c.dynamic.Resource(snapshotGVR).Namespace(ns).Create(t.Context(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) waitSnapshotReady(t *testing.T, ns, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		obj, err := c.dynamic.Resource(snapshotGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ready, _, _ := unstructured.NestedBool(obj.Object, "status", "readyToUse")
		return ready, nil
	})
	if err != nil {
		c.dumpEvents(t, ns)
		t.Fatalf("snapshot %s/%s not ready: %v", ns, name, err)
	}
}

func (c *cluster) deleteSnapshot(t *testing.T, ns, name string) {
	t.Helper()
	if err := c.dynamic.Resource(snapshotGVR).Namespace(ns).Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitGone(t, func(ctx context.Context) error {
		_, err := c.dynamic.Resource(snapshotGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		return err
	}, "snapshot "+name)
	// The content goes after the snapshot, once the sidecar has had the driver delete the snapshot.
	err := wait.PollUntilContextTimeout(t.Context(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		contents, err := c.dynamic.Resource(contentGVR).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, content := range contents.Items {
			refNS, _, _ := unstructured.NestedString(content.Object, "spec", "volumeSnapshotRef", "namespace")
			refName, _, _ := unstructured.NestedString(content.Object, "spec", "volumeSnapshotRef", "name")
			if refNS == ns && refName == name {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("content of snapshot %s/%s not deleted: %v", ns, name, err)
	}
}

func fromClaim(name string) *corev1.TypedLocalObjectReference {
	return &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: name}
}

func fromSnapshot(name string) *corev1.TypedLocalObjectReference {
	group := "snapshot.storage.k8s.io"
	return &corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: name}
}

func (c *cluster) storageClass(t *testing.T, name string, params map[string]string) {
	t.Helper()
	expand := true
	_, err := c.client.StorageV1().StorageClasses().Create(t.Context(), &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: driverName, Parameters: params, AllowVolumeExpansion: &expand,
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.client.StorageV1().StorageClasses().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

func (c *cluster) dumpEvents(t *testing.T, ns string) {
	t.Helper()
	events, err := c.client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, e := range events.Items {
		t.Logf("event %s/%s %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
	}
}

const dev = "/dev/xvda"

func blockVol(claim string) podVolume { return podVolume{claim: claim, path: dev, block: true} }
