package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

func lines(t *testing.T, out string, n int) []string {
	t.Helper()
	var fields []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			fields = append(fields, f[0])
		}
	}
	if len(fields) < n {
		t.Fatalf("expected %d lines of output, got:\n%s", n, out)
	}
	return fields[len(fields)-n:]
}

const md5First8M = "dd if=" + dev + " bs=1M count=8 2>/dev/null | md5sum"

// TestClone: clone data equals the source, the two are independent after a write, and after the source
// is deleted a bigger clone of the clone holds the same data followed by zeroes.
func TestClone(t *testing.T) {
	c := requireCluster(t)
	ns := c.namespace(t, "e2e-clone")
	c.createClaim(t, ns, claimSpec{name: "src", size: 64 * mi, block: true})
	c.waitBound(t, ns, "src")
	srcSum := lines(t, c.run(t, ns, busybox, "dd if=/dev/urandom of="+dev+" bs=1M count=8 conv=fsync 2>/dev/null; "+md5First8M, blockVol("src")), 1)[0]

	c.createClaim(t, ns, claimSpec{name: "clone", size: 64 * mi, block: true, source: fromClaim("src")})
	c.waitBound(t, ns, "clone")
	if got := lines(t, c.run(t, ns, busybox, md5First8M, blockVol("clone")), 1)[0]; got != srcSum {
		t.Fatalf("clone holds %s, source %s", got, srcSum)
	}
	cloneSum := lines(t, c.run(t, ns, busybox, "dd if=/dev/zero of="+dev+" bs=1M count=1 conv=fsync 2>/dev/null; "+md5First8M, blockVol("clone")), 1)[0]
	if cloneSum == srcSum {
		t.Fatal("write to the clone did not change it")
	}
	if got := lines(t, c.run(t, ns, busybox, md5First8M, blockVol("src")), 1)[0]; got != srcSum {
		t.Fatalf("write to the clone changed the source: %s", got)
	}

	c.deleteClaim(t, ns, "src")
	c.createClaim(t, ns, claimSpec{name: "clone2", size: 128 * mi, block: true, source: fromClaim("clone")})
	c.waitBound(t, ns, "clone2")
	out := lines(t, c.run(t, ns, busybox, "blockdev --getsize64 "+dev+"; "+md5First8M+
		"; dd if="+dev+" bs=1M skip=64 count=64 2>/dev/null | md5sum; dd if=/dev/zero bs=1M count=64 2>/dev/null | md5sum",
		blockVol("clone2")), 4)
	if out[0] != strconv.FormatInt(128*mi, 10) {
		t.Errorf("clone of clone has %s bytes, want %d", out[0], 128*mi)
	}
	if out[1] != cloneSum {
		t.Errorf("clone of clone holds %s, clone %s", out[1], cloneSum)
	}
	if out[2] != out[3] {
		t.Errorf("tail of the bigger clone is not zero")
	}
}

// TestSnapshot: a snapshot deleted right after creation goes away, content and all; a new one restores
// equal data, and a bigger restore reads zeroes past the snapshot's size. The new snapshot has a name of
// its own: the driver sees a fresh snapshot name (snapshot-<uid>) either way, while reusing the deleted
// object's name races snapshot-controller's cache, which can bind the new snapshot to the old content
// (SnapshotMisbound, seen with v8.7.0).
func TestSnapshot(t *testing.T) {
	c := requireCluster(t)
	ns := c.namespace(t, "e2e-snapshot")
	c.createClaim(t, ns, claimSpec{name: "src", size: 64 * mi, block: true})
	c.waitBound(t, ns, "src")
	sum := lines(t, c.run(t, ns, busybox, "dd if=/dev/urandom of="+dev+" bs=1M count=8 conv=fsync 2>/dev/null; "+md5First8M, blockVol("src")), 1)[0]

	c.createSnapshot(t, ns, "short-lived", "src")
	c.deleteSnapshot(t, ns, "short-lived")
	c.createSnapshot(t, ns, "snap", "src")
	c.waitSnapshotReady(t, ns, "snap")
	c.run(t, ns, busybox, "dd if=/dev/zero of="+dev+" bs=1M count=8 conv=fsync 2>/dev/null", blockVol("src"))

	c.createClaim(t, ns, claimSpec{name: "restore", size: 64 * mi, block: true, source: fromSnapshot("snap")})
	c.waitBound(t, ns, "restore")
	if got := lines(t, c.run(t, ns, busybox, md5First8M, blockVol("restore")), 1)[0]; got != sum {
		t.Fatalf("restored %s, snapshot of %s", got, sum)
	}
	c.createClaim(t, ns, claimSpec{name: "bigger", size: 128 * mi, block: true, source: fromSnapshot("snap")})
	c.waitBound(t, ns, "bigger")
	out := lines(t, c.run(t, ns, busybox, "blockdev --getsize64 "+dev+"; "+md5First8M+
		"; dd if="+dev+" bs=1M skip=64 count=64 2>/dev/null | md5sum; dd if=/dev/zero bs=1M count=64 2>/dev/null | md5sum",
		blockVol("bigger")), 4)
	if out[0] != strconv.FormatInt(128*mi, 10) || out[1] != sum || out[2] != out[3] {
		t.Errorf("bigger restore: size %s, data %s (want %s), tail zero %v", out[0], out[1], sum, out[2] == out[3])
	}
}

func (c *cluster) resize(t *testing.T, ns, name string, size int64) {
	t.Helper()
	patch := `{"spec":{"resources":{"requests":{"storage":"` + strconv.FormatInt(size, 10) + `"}}}}`
	if _, err := c.client.CoreV1().PersistentVolumeClaims(ns).Patch(t.Context(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitCapacity waits until the claim's status reports at least size bytes.
func (c *cluster) waitCapacity(t *testing.T, ns, name string, size int64) {
	t.Helper()
	c.waitGrown(t, ns, name, size, "claim", func(_ context.Context, pvc *corev1.PersistentVolumeClaim) (resource.Quantity, error) {
		return pvc.Status.Capacity[corev1.ResourceStorage], nil
	})
}

// waitVolumeCapacity waits until the claim's PersistentVolume has at least size bytes.
func (c *cluster) waitVolumeCapacity(t *testing.T, ns, name string, size int64) {
	t.Helper()
	c.waitGrown(t, ns, name, size, "volume of", func(ctx context.Context, pvc *corev1.PersistentVolumeClaim) (resource.Quantity, error) {
		pv, err := c.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return resource.Quantity{}, err
		}
		return pv.Spec.Capacity[corev1.ResourceStorage], nil
	})
}

func (c *cluster) waitGrown(t *testing.T, ns, name string, size int64, what string,
	capacity func(context.Context, *corev1.PersistentVolumeClaim) (resource.Quantity, error)) {
	t.Helper()
	want := resource.NewQuantity(size, resource.BinarySI)
	err := wait.PollUntilContextTimeout(t.Context(), time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		pvc, err := c.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		got, err := capacity(ctx, pvc)
		return err == nil && got.Cmp(*want) >= 0, nil
	})
	if err != nil {
		c.dumpEvents(t, ns)
		t.Fatalf("%s %s/%s did not reach %d bytes: %v", what, ns, name, size, err)
	}
}

// TestExpand: Block and Filesystem claims grow; pods started afterwards see the new size and the data.
func TestExpand(t *testing.T) {
	c := requireCluster(t)
	ns := c.namespace(t, "e2e-expand")
	c.createClaim(t, ns, claimSpec{name: "block", size: 64 * mi, block: true})
	c.waitBound(t, ns, "block")
	c.run(t, ns, busybox, "echo pvpool | dd of="+dev+" conv=fsync 2>/dev/null", blockVol("block"))
	c.resize(t, ns, "block", 128*mi)
	c.waitCapacity(t, ns, "block", 128*mi)
	out := lines(t, c.run(t, ns, busybox, "blockdev --getsize64 "+dev+"; dd if="+dev+" bs=6 count=1 2>/dev/null; echo", blockVol("block")), 2)
	if out[0] != strconv.FormatInt(128*mi, 10) || out[1] != "pvpool" {
		t.Errorf("after expansion: size %s, data %q", out[0], out[1])
	}

	c.createClaim(t, ns, claimSpec{name: "fs", size: 64 * mi})
	c.waitBound(t, ns, "fs")
	fs := podVolume{claim: "fs", path: "/data"}
	c.run(t, ns, busybox, "echo pvpool > /data/file", fs)
	c.resize(t, ns, "fs", 256*mi)
	// The image grows while no pod uses the claim (the resizer then updates the volume); the filesystem
	// grows when next staged.
	c.waitVolumeCapacity(t, ns, "fs", 256*mi)
	out = lines(t, c.run(t, ns, busybox, "df -k /data | tail -1 | awk '{print $2}'; cat /data/file", fs), 2)
	if kb, _ := strconv.ParseInt(out[0], 10, 64); kb*1024 < 200*mi || out[1] != "pvpool" {
		t.Errorf("after filesystem expansion: %s KiB, data %q", out[0], out[1])
	}
	c.waitCapacity(t, ns, "fs", 256*mi)
}

// TestDeleteWhileStaged: deleting a claim in use waits for its pod, then the volume and its image go.
func TestDeleteWhileStaged(t *testing.T) {
	c := requireCluster(t)
	ns := c.namespace(t, "e2e-delete")
	c.createClaim(t, ns, claimSpec{name: "busy", size: 64 * mi, block: true})
	pvc := c.waitBound(t, ns, "busy")
	c.start(t, ns, "holder", "sleep 3600", blockVol("busy"))
	if err := c.client.CoreV1().PersistentVolumeClaims(ns).Delete(t.Context(), "busy", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	still, err := c.client.CoreV1().PersistentVolumeClaims(ns).Get(t.Context(), "busy", metav1.GetOptions{})
	if err != nil || still.DeletionTimestamp == nil {
		t.Fatalf("claim in use: %v, %v; want it terminating", still, err)
	}
	if _, err := c.client.CoreV1().PersistentVolumes().Get(t.Context(), pvc.Spec.VolumeName, metav1.GetOptions{}); err != nil {
		t.Fatalf("volume of a claim in use is gone: %v", err)
	}
	c.deletePod(t, ns, "holder")
	c.waitGone(t, func(ctx context.Context) error {
		_, err := c.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		return err
	}, "volume "+pvc.Spec.VolumeName)
	if dir := os.Getenv("PVPOOL_CLUSTER_DIR"); dir != "" {
		meta := filepath.Join(dir, "backing", "volumes", "pvpool-volumes", pvc.Spec.VolumeName+".json")
		if _, err := os.Stat(meta); !os.IsNotExist(err) {
			t.Errorf("metadata of the deleted volume remains: %s (%v)", meta, err)
		}
	}
}

// TestCompareQcow2 uses its own backing claim: the StorageClass is deleted right after provisioning,
// data a pod wrote equals the qcow2 image (qemu-img compare), and once the volume is deleted the backing
// claim deletes without delay and holds no images.
func TestCompareQcow2(t *testing.T) {
	c := requireCluster(t)
	node := os.Getenv("PVPOOL_NODE_NAME")
	if node == "" {
		t.Skip("PVPOOL_NODE_NAME is not set")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed on this host")
	}
	ns := c.namespace(t, "e2e-compare")
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	pvName := "e2e-backing-" + suffix(t)
	fsMode := corev1.PersistentVolumeFilesystem
	if _, err := c.client.CoreV1().PersistentVolumes().Create(t.Context(), &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			VolumeMode:                    &fsMode,
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: "backing"},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.client.CoreV1().PersistentVolumes().Delete(context.Background(), pvName, metav1.DeleteOptions{})
	})
	c.createClaim(t, ns, claimSpec{name: "backing", static: true, size: 10 << 30, modes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}})
	c.waitBound(t, ns, "backing")

	class := "e2e-compare-" + suffix(t)
	c.storageClass(t, class, map[string]string{"backingClaimName": "backing", "backingClaimNamespace": ns, "basePath": "images"})
	c.createClaim(t, ns, claimSpec{name: "data", class: class, size: 64 * mi, block: true})
	pvc := c.waitBound(t, ns, "data")
	if err := c.client.StorageV1().StorageClasses().Delete(t.Context(), class, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.run(t, ns, busybox, "dd if=/dev/urandom of=/backing/expected.raw bs=1M count=4 2>/dev/null; dd if=/backing/expected.raw of="+dev+" bs=1M conv=fsync 2>/dev/null",
		blockVol("data"), podVolume{claim: "backing", path: "/backing"})

	var meta struct {
		Head string `json:"head"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "images", "pvpool-volumes", pvc.Spec.VolumeName+".json"))
	if err != nil {
		t.Fatalf("volume metadata in the backing claim: %v", err)
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(dir, "images", "pvpool-images", meta.Head)
	if out, err := exec.Command("qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", filepath.Join(dir, "expected.raw"), image).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare: %v: %s", err, out)
	}

	// The plugin reaches the backing claim through holder pods that mount it, one per component on this
	// node: while a pod uses the volume, the node's qemu-storage-daemon has the image open in kubelet's
	// mount of the claim for the node holder.
	c.start(t, ns, "user", "sleep 3600", blockVol("data"))
	holders := c.holderPods(t, ns, "backing")
	nodeHolder, ok := holders["node"]
	if !ok || holders["controller"] == nil {
		t.Fatalf("holder pods of the backing claim by component: %v; want node and controller", holders)
	}
	if nodeHolder.Spec.NodeName != node || nodeHolder.Status.Phase != corev1.PodRunning ||
		len(nodeHolder.Spec.Volumes) != 1 || nodeHolder.Spec.Volumes[0].PersistentVolumeClaim == nil ||
		nodeHolder.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != "backing" || nodeHolder.Spec.Volumes[0].PersistentVolumeClaim.ReadOnly {
		t.Fatalf("node holder %s on %q, phase %s, volumes %+v; want running on %s with the claim read-write",
			nodeHolder.Name, nodeHolder.Spec.NodeName, nodeHolder.Status.Phase, nodeHolder.Spec.Volumes, node)
	}
	viaHolder := fmt.Sprintf("/pods/%s/volumes/kubernetes.io~local-volume/%s/images/pvpool-images/%s", nodeHolder.UID, pvName, meta.Head)
	if open := openFilesEndingIn(t, viaHolder); len(open) == 0 {
		t.Errorf("no process has the volume's image open through the node holder (…%s)", viaHolder)
	} else {
		t.Logf("image open through the holder: %v", open)
	}
	c.deletePod(t, ns, "user")

	c.deleteClaim(t, ns, "data")
	if err := c.client.CoreV1().PersistentVolumeClaims(ns).Delete(t.Context(), "backing", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitGone(t, func(ctx context.Context) error {
		_, err := c.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "backing", metav1.GetOptions{})
		return err
	}, "backing claim")
	left, _ := filepath.Glob(filepath.Join(dir, "images", "pvpool-images", "*"))
	if len(left) != 0 {
		t.Errorf("images left in the backing claim after deleting its volumes: %v", left)
	}
	if holders := c.holderPods(t, ns, "backing"); len(holders) != 0 {
		t.Errorf("holder pods left after the backing claim was deleted: %v", holders)
	}
}

// openFilesEndingIn lists the processes of this host with a file open whose path ends in suffix.
func openFilesEndingIn(t *testing.T, suffix string) []string {
	t.Helper()
	fds, err := filepath.Glob("/proc/[0-9]*/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasSuffix(target, suffix) {
			found = append(found, fd+" -> "+target)
		}
	}
	return found
}

// TestSnapshotAndCloneWhileWriting takes a snapshot and a clone of a volume a pod keeps writing to.
func TestSnapshotAndCloneWhileWriting(t *testing.T) {
	c := requireCluster(t)
	ns := c.namespace(t, "e2e-live")
	c.createClaim(t, ns, claimSpec{name: "busy", size: 64 * mi, block: true})
	c.waitBound(t, ns, "busy")
	c.start(t, ns, "writer", "i=0; while true; do i=$((i+1)); printf '%016d' $i | dd of="+dev+" bs=16 count=1 conv=fsync,notrunc 2>/dev/null; done",
		blockVol("busy"))
	time.Sleep(3 * time.Second)
	c.createSnapshot(t, ns, "live", "busy")
	c.createClaim(t, ns, claimSpec{name: "live-clone", size: 64 * mi, block: true, source: fromClaim("busy")})
	c.waitSnapshotReady(t, ns, "live")
	c.waitBound(t, ns, "live-clone")
	time.Sleep(time.Second)
	c.deletePod(t, ns, "writer")

	c.createClaim(t, ns, claimSpec{name: "restore", size: 64 * mi, block: true, source: fromSnapshot("live")})
	c.waitBound(t, ns, "restore")
	counter := func(claim string) int64 {
		out := lines(t, c.run(t, ns, busybox, "dd if="+dev+" bs=16 count=1 2>/dev/null; echo", blockVol(claim)), 1)[0]
		n, err := strconv.ParseInt(out, 10, 64)
		if err != nil || n < 1 {
			t.Fatalf("%s holds %q, want the writer's counter", claim, out)
		}
		return n
	}
	snap, clone, final := counter("restore"), counter("live-clone"), counter("busy")
	if snap > final || clone > final {
		t.Errorf("copies are ahead of the source: snapshot %d, clone %d, source %d", snap, clone, final)
	}
	t.Logf("writer counter: snapshot %d, clone %d, final %d", snap, clone, final)
}

// TestLocalPathFilesystem runs PVPool's example pattern on the local-path class: one pod writes
// /workspace/data.txt, another reads it.
func TestLocalPathFilesystem(t *testing.T) {
	c := requireCluster(t)
	ns := c.namespace(t, "e2e-local-path")
	c.createClaim(t, ns, claimSpec{name: "workspace", class: "local-path", size: 64 * mi})
	c.waitBound(t, ns, "workspace")
	ws := podVolume{claim: "workspace", path: "/workspace"}
	c.run(t, ns, busybox, "echo hello > /workspace/data.txt", ws)
	out := lines(t, c.run(t, ns, busybox, "cat /workspace/data.txt; grep ' /workspace ' /proc/mounts | awk '{print $3}'", ws), 2)
	if out[0] != "hello" || out[1] != "ext4" {
		t.Errorf("workspace: %v", out)
	}
}
