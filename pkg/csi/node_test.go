package csi

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pvpool/pvpool/pkg/volume"
)

func requireNode(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices, FUSE and mounts")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s: %v", dev, err)
		}
	}
	for _, bin := range []string{"qemu-img", "qemu-io", "qemu-storage-daemon", "nbdfuse", "fusermount3", "losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (hack/install-node-deps.sh installs it)", bin)
		}
	}
}

type nodeFixture struct {
	backing, runDir, work string
}

func newNodeFixture(t *testing.T) *nodeFixture {
	t.Helper()
	runDir, err := os.MkdirTemp("/run", "pvpool-csi-test-")
	if err != nil {
		t.Fatal(err)
	}
	f := &nodeFixture{backing: t.TempDir(), runDir: runDir, work: t.TempDir()}
	t.Cleanup(func() {
		// Whatever a failed test left: mounts under work, loop devices on our nbdfuse files, daemons.
		raw, _ := os.ReadFile("/proc/self/mountinfo")
		lines := strings.Split(string(raw), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			fields := strings.Fields(lines[i])
			if len(fields) > 4 && (strings.HasPrefix(fields[4], f.work) || strings.HasPrefix(fields[4], f.runDir)) {
				_ = unix.Unmount(fields[4], unix.MNT_DETACH)
			}
		}
		out, _ := exec.Command("losetup", "-nO", "NAME,BACK-FILE").Output()
		for _, line := range strings.Split(string(out), "\n") {
			if fields := strings.Fields(line); len(fields) == 2 && strings.HasPrefix(fields[1], f.runDir) {
				_ = exec.Command("losetup", "-d", fields[0]).Run()
			}
		}
		pids, _ := filepath.Glob(filepath.Join(f.runDir, "volumes", "*", "*.pid"))
		for _, p := range pids {
			var pid int
			if raw, err := os.ReadFile(p); err == nil && scanInt(string(raw), &pid) && pid > 0 {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		os.RemoveAll(f.runDir)
	})
	return f
}

func (f *nodeFixture) driver(t *testing.T) *Driver {
	t.Helper()
	d, err := NewDriver(Config{Controller: true, Node: true, NodeID: "node-1", Locator: DirLocator{Dir: f.backing},
		RunDir: f.runDir, AttachMode: volume.AttachNBDFuse})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	return d
}

func stageBlock(t *testing.T, d *Driver, f *nodeFixture, id string) string {
	t.Helper()
	ctx := t.Context()
	staging := filepath.Join(f.work, "staging", filepath.Base(id))
	target := filepath.Join(f.work, "publish", filepath.Base(id))
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockRWO[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: blockRWO[0]}); err != nil {
		t.Fatal(err)
	}
	return target
}

func unstage(t *testing.T, d *Driver, f *nodeFixture, id string) {
	t.Helper()
	ctx := context.Background()
	staging := filepath.Join(f.work, "staging", filepath.Base(id))
	target := filepath.Join(f.work, "publish", filepath.Base(id))
	if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

func aligned(size int) []byte {
	raw := make([]byte, size+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(&raw[0]))%4096)) % 4096
	return raw[off : off+size]
}

// chunkGenerations reads an image (through its chain) and returns the byte each 4 KiB chunk of the first
// span bytes is filled with, or an error if a chunk is not uniform.
func chunkGenerations(t *testing.T, image string, span int64) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", image, raw).CombinedOutput(); err != nil {
		t.Fatalf("convert %s: %v: %s", image, err, out)
	}
	data, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	var gens []byte
	for off := int64(0); off < span; off += 4096 {
		chunk := data[off : off+4096]
		for _, b := range chunk {
			if b != chunk[0] {
				t.Fatalf("%s: chunk at %d is torn", image, off)
			}
		}
		gens = append(gens, chunk[0])
	}
	return gens
}

// TestLiveSnapshotAndCloneWhileWriting takes snapshots and a clone of a staged volume while a writer keeps
// rewriting it, and checks every copy holds everything acknowledged before the call and nothing that was
// not yet written.
func TestLiveSnapshotAndCloneWhileWriting(t *testing.T) {
	requireNode(t)
	f := newNodeFixture(t)
	d := f.driver(t)
	ctx := t.Context()
	const span = 8 << 20
	v := mustCreate(t, d, "live", 32<<20, nil)
	device := stageBlock(t, d, f, v.VolumeId)
	t.Cleanup(func() { unstage(t, d, f, v.VolumeId) })

	var completed, current atomic.Int32 // generations fully synced / being written
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		fd, err := os.OpenFile(device, os.O_WRONLY|unix.O_DIRECT, 0)
		if err != nil {
			writeErr = err
			return
		}
		defer fd.Close()
		buf := aligned(64 << 10)
		for gen := int32(1); gen < 250; gen++ {
			select {
			case <-stop:
				return
			default:
			}
			current.Store(gen)
			for i := range buf {
				buf[i] = byte(gen)
			}
			for off := int64(0); off < span; off += int64(len(buf)) {
				if _, err := fd.WriteAt(buf, off); err != nil {
					writeErr = fmt.Errorf("generation %d at %d: %w", gen, off, err)
					return
				}
			}
			if err := fd.Sync(); err != nil {
				writeErr = err
				return
			}
			completed.Store(gen)
		}
	}()

	type copyCheck struct {
		image    func() string
		min, max int32
	}
	var checks []copyCheck
	for completed.Load() < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 3; i++ {
		time.Sleep(150 * time.Millisecond)
		lo := completed.Load()
		snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("live-%d", i), SourceVolumeId: v.VolumeId})
		if err != nil {
			t.Fatal(err)
		}
		hi := current.Load()
		s, _, _ := d.lookupVolume(ctx, v.VolumeId)
		_, key, _ := decodeID(snapshotIDPrefix, snap.Snapshot.SnapshotId)
		rec, err := s.loadSnapshot(key)
		if err != nil || rec == nil {
			t.Fatalf("snapshot record: %v", err)
		}
		img := s.imagePath(rec.Image)
		checks = append(checks, copyCheck{image: func() string { return img }, min: lo, max: hi})
	}
	lo := completed.Load()
	clone := mustCreate(t, d, "live-clone", 32<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.VolumeId}}})
	hi := current.Load()
	checks = append(checks, copyCheck{image: func() string { return headOf(t, d, clone.VolumeId) }, min: lo, max: hi})
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("writer failed across live snapshots: %v", writeErr)
	}
	for i, c := range checks {
		if c.min == c.max {
			t.Logf("copy %d taken between generations %d and %d", i, c.min, c.max)
		}
		for off, g := range chunkGenerations(t, c.image(), span) {
			if int32(g) < c.min || int32(g) > c.max {
				t.Fatalf("copy %d: chunk %d holds generation %d, outside [%d, %d]", i, off, g, c.min, c.max)
			}
		}
	}
	// The volume itself holds the last completed generation.
	last := completed.Load()
	unstage(t, d, f, v.VolumeId)
	for off, g := range chunkGenerations(t, headOf(t, d, v.VolumeId), span) {
		if int32(g) < last {
			t.Fatalf("volume chunk %d holds generation %d, want >= %d", off, g, last)
		}
	}
	chain, err := volume.Chain(headOf(t, d, v.VolumeId), volume.BackingOf)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range chain {
		if res, err := volume.Check(ctx, img, false); err != nil || res.Leaks != 0 {
			t.Errorf("check %s: %+v, %v", img, res, err)
		}
	}
	// Staging again works on the new head (the cleanup unstages it).
	stageBlock(t, d, f, v.VolumeId)
}

// TestRestartRecoversStagedVolume restarts the plugin (a new Driver on the same run directory) and checks
// it adopts the running daemon: I/O continues, live snapshots and unstaging still work.
func TestRestartRecoversStagedVolume(t *testing.T) {
	requireNode(t)
	f := newNodeFixture(t)
	d := f.driver(t)
	ctx := t.Context()
	v := mustCreate(t, d, "restart", 16<<20, nil)
	device := stageBlock(t, d, f, v.VolumeId)
	writeBlock := func(pattern byte) {
		fd, err := os.OpenFile(device, os.O_WRONLY|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer fd.Close()
		buf := aligned(1 << 20)
		for i := range buf {
			buf[i] = pattern
		}
		if _, err := fd.WriteAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		if err := fd.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	writeBlock(0x61)
	d.node.close() // the old process goes away without unstaging

	d2 := f.driver(t)
	t.Cleanup(func() { unstage(t, d2, f, v.VolumeId) })
	nv := d2.node.get(v.VolumeId)
	if nv == nil || nv.daemon == nil || !nv.Device.Healthy() {
		t.Fatalf("volume not recovered: %+v", nv)
	}
	writeBlock(0x62)
	snap, err := d2.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "after-restart", SourceVolumeId: v.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	stats, err := d2.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: device})
	if err != nil || len(stats.Usage) != 1 || stats.Usage[0].Total != 16<<20 {
		t.Fatalf("stats = %v, %v", stats, err)
	}
	unstage(t, d2, f, v.VolumeId)
	if out, _ := exec.Command("losetup", "-nO", "BACK-FILE").Output(); strings.Contains(string(out), f.runDir) {
		t.Fatalf("loop device left attached: %s", out)
	}
	r := mustCreate(t, d2, "restart-restore", 16<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}})
	qemuIO(t, headOf(t, d2, r.VolumeId), "read -P 0x62 0 1M")
	stageBlock(t, d2, f, v.VolumeId)
}

// TestFilesystemVolumeGrowsAfterExpansion formats a Mount volume on first stage, keeps its files across
// stages and grows the filesystem after an offline expansion.
func TestFilesystemVolumeGrowsAfterExpansion(t *testing.T) {
	for _, c := range []struct {
		fsType string
		size   int64
	}{{"ext4", 64 << 20}, {"xfs", 320 << 20}} {
		t.Run(c.fsType, func(t *testing.T) {
			if _, err := exec.LookPath("mkfs." + c.fsType); err != nil {
				t.Skipf("mkfs.%s not installed", c.fsType)
			}
			testFilesystemGrows(t, c.fsType, c.size)
		})
	}
}

func testFilesystemGrows(t *testing.T, fsType string, initial int64) {
	requireNode(t)
	f := newNodeFixture(t)
	d := f.driver(t)
	ctx := t.Context()
	mountCap := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	resp, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "fs", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		Parameters: testParams, CapacityRange: &csi.CapacityRange{RequiredBytes: initial}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Volume.VolumeId
	staging := filepath.Join(f.work, "staging-fs")
	target := filepath.Join(f.work, "publish-fs")
	stage := func() {
		if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap}); err != nil {
			t.Fatal(err)
		}
	}
	unstageFS := func() {
		if _, err := d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
	}
	size := func() int64 {
		var st unix.Statfs_t
		if err := unix.Statfs(target, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Blocks) * int64(st.Bsize)
	}
	stage()
	if err := os.WriteFile(filepath.Join(target, "data.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := size()
	if _, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * initial}}); err == nil {
		t.Fatal("expansion of a staged volume accepted; the plugin only expands offline")
	}
	unstageFS()
	exp, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * initial}, VolumeCapability: mountCap})
	if err != nil || !exp.NodeExpansionRequired || exp.CapacityBytes != 2*initial {
		t.Fatalf("expand = %v, %v", exp, err)
	}
	stage()
	t.Cleanup(unstageFS)
	if _, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * initial}}); err != nil {
		t.Fatal(err)
	}
	if after := size(); after < before+initial*3/4 {
		t.Fatalf("filesystem did not grow: %d -> %d", before, after)
	}
	if raw, err := os.ReadFile(filepath.Join(target, "data.txt")); err != nil || string(raw) != "hello" {
		t.Fatalf("data.txt = %q, %v", raw, err)
	}
}

func scanInt(s string, out *int) bool {
	_, err := fmt.Sscan(s, out)
	return err == nil
}

// TestRecoveryAfterDaemonsDied kills the daemon and bridge of a staged volume (as a container restart
// does), checks the volume reports itself inaccessible, and that a restarted plugin serves it again at
// the same publish path with its data.
func TestRecoveryAfterDaemonsDied(t *testing.T) {
	requireNode(t)
	f := newNodeFixture(t)
	d := f.driver(t)
	ctx := t.Context()
	v := mustCreate(t, d, "died", 16<<20, nil)
	target := stageBlock(t, d, f, v.VolumeId)
	fd, err := os.OpenFile(target, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := aligned(1 << 20)
	for i := range buf {
		buf[i] = 0x71
	}
	if _, err := fd.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := fd.Sync(); err != nil {
		t.Fatal(err)
	}
	fd.Close()
	health, err := d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.VolumeId})
	if err != nil || len(health.VolumeHealth.HealthStatuses) != 0 {
		t.Fatalf("health of a working volume = %v, %v", health, err)
	}
	nv := d.node.get(v.VolumeId)
	_ = unix.Kill(nv.daemon.PID(), unix.SIGKILL)
	_ = unix.Kill(nv.Device.FusePID, unix.SIGKILL)
	deadline := time.Now().Add(5 * time.Second)
	for nv.daemon.Alive() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	health, err = d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.VolumeId})
	if err != nil || len(health.VolumeHealth.HealthStatuses) != 1 || health.VolumeHealth.HealthStatuses[0].Status != csi.VolumeHealthErrorType_INACCESSIBLE {
		t.Fatalf("health of a dead volume = %v, %v", health, err)
	}
	d.node.close()

	d2 := f.driver(t)
	t.Cleanup(func() { unstage(t, d2, f, v.VolumeId) })
	health, err = d2.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.VolumeId})
	if err != nil || len(health.VolumeHealth.HealthStatuses) != 0 {
		t.Fatalf("health after recovery = %v, %v", health, err)
	}
	rfd, err := os.OpenFile(target, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rfd.Close()
	got := aligned(1 << 20)
	if _, err := rfd.ReadAt(got, 0); err != nil {
		t.Fatalf("read through the rebound publish path: %v", err)
	}
	for i, b := range got {
		if b != 0x71 {
			t.Fatalf("byte %d = %#x after recovery, want 0x71", i, b)
		}
	}
}

func (f *nodeFixture) nodeDriver(t *testing.T, nodeID string) *Driver {
	t.Helper()
	runDir := filepath.Join(f.runDir, nodeID)
	d, err := NewDriver(Config{Node: true, NodeID: nodeID, Locator: DirLocator{Dir: f.backing}, RunDir: runDir,
		AttachMode: volume.AttachNBDFuse, AgentSocket: filepath.Join(runDir, "agent.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stop, err := d.node.serveAgent(ctx, d.cfg.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(); cancel() })
	return d
}

func stageOn(t *testing.T, d *Driver, f *nodeFixture, id string, mode csi.VolumeCapability_AccessMode_Mode) (string, error) {
	t.Helper()
	c := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	staging := filepath.Join(f.work, d.cfg.NodeID, "staging")
	target := filepath.Join(f.work, d.cfg.NodeID, "publish")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeStageVolume(t.Context(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		return "", err
	}
	if _, err := d.NodePublishVolume(t.Context(), &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: c}); err != nil {
		t.Fatal(err)
	}
	return target, nil
}

func unstageOn(t *testing.T, d *Driver, f *nodeFixture, id string) {
	t.Helper()
	if _, err := d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id,
		TargetPath: filepath.Join(f.work, d.cfg.NodeID, "publish")}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id,
		StagingTargetPath: filepath.Join(f.work, d.cfg.NodeID, "staging")}); err != nil {
		t.Fatal(err)
	}
}

// TestAccessModesAcrossNodesAndRemoteLiveSnapshot runs a controller and two node plugins on one backing
// directory: a writer excludes every other node, readers share, and a controller without a node service
// snapshots a volume staged elsewhere through that node's agent socket.
func TestAccessModesAcrossNodesAndRemoteLiveSnapshot(t *testing.T) {
	requireNode(t)
	f := newNodeFixture(t)
	ctx := t.Context()
	ctrl, err := NewDriver(Config{Controller: true, Locator: DirLocator{Dir: f.backing}})
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := f.nodeDriver(t, "node-1"), f.nodeDriver(t, "node-2")
	v := mustCreate(t, ctrl, "shared", 16<<20, nil)
	rw := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	rox := csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY

	target, err := stageOn(t, n1, f, v.VolumeId, rw)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := os.OpenFile(target, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := aligned(1 << 20)
	for i := range buf {
		buf[i] = 0x81
	}
	if _, err := fd.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := fd.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []csi.VolumeCapability_AccessMode_Mode{rw, rox} {
		if _, err := stageOn(t, n2, f, v.VolumeId, mode); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("staging on a second node (%s) while node-1 writes: %v, want FailedPrecondition", mode, err)
		}
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("DeleteVolume of a staged volume: %v, want FailedPrecondition", err)
	}
	// The controller reaches node-1's daemon through its agent socket.
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "remote", SourceVolumeId: v.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	if top, err := n1.node.get(v.VolumeId).daemon.TopImage(ctx); err != nil || top != headOf(t, ctrl, v.VolumeId) {
		t.Fatalf("node-1 serves %q (%v), metadata says %q", top, err, headOf(t, ctrl, v.VolumeId))
	}
	for i := range buf {
		buf[i] = 0x82
	}
	if _, err := fd.WriteAt(buf, 0); err != nil {
		t.Fatalf("write after remote live snapshot: %v", err)
	}
	fd.Close()
	unstageOn(t, n1, f, v.VolumeId)
	r := mustCreate(t, ctrl, "remote-restore", 16<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}})
	qemuIO(t, headOf(t, ctrl, r.VolumeId), "read -P 0x81 0 1M")
	qemuIO(t, headOf(t, ctrl, v.VolumeId), "read -P 0x82 0 1M")

	// Readers share the volume across nodes, read-only.
	t1, err := stageOn(t, n1, f, v.VolumeId, rox)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unstageOn(t, n1, f, v.VolumeId) })
	t2, err := stageOn(t, n2, f, v.VolumeId, rox)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unstageOn(t, n2, f, v.VolumeId) })
	for _, p := range []string{t1, t2} {
		dev := n1.node.get(v.VolumeId).Device.Path
		if p == t2 {
			dev = n2.node.get(v.VolumeId).Device.Path
		}
		if raw, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "ro")); err != nil || strings.TrimSpace(string(raw)) != "1" {
			t.Errorf("reader device %s is writable: %q %v", dev, raw, err)
		}
		rfd, err := os.OpenFile(p, os.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := aligned(1 << 20)
		_, err = rfd.ReadAt(got, 0)
		rfd.Close()
		if err != nil || got[0] != 0x82 || got[len(got)-1] != 0x82 {
			t.Fatalf("reader at %s got %#x, %v", p, got[0], err)
		}
	}
	if _, err := stageOn(t, n2, f, v.VolumeId, rw); status.Code(err) != codes.AlreadyExists && status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("writable stage while readers exist: %v", err)
	}
}

// TestReadOnlyFilesystemFromLiveSnapshot restores a snapshot taken while the filesystem was mounted and
// written (its journal is dirty) and mounts it read-only, as a ReadOnlyMany claim would.
func TestReadOnlyFilesystemFromLiveSnapshot(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			if _, err := exec.LookPath("mkfs." + fsType); err != nil {
				t.Skipf("mkfs.%s not installed", fsType)
			}
			requireNode(t)
			f := newNodeFixture(t)
			d := f.driver(t)
			ctx := t.Context()
			capFor := func(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
				return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
					AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
			}
			rw, rox := capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), capFor(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
			resp, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: []*csi.VolumeCapability{rw},
				Parameters: testParams, CapacityRange: &csi.CapacityRange{RequiredBytes: 320 << 20}})
			if err != nil {
				t.Fatal(err)
			}
			src := resp.Volume.VolumeId
			stageFS := func(id, name string, c *csi.VolumeCapability) string {
				staging, target := filepath.Join(f.work, name+"-staging"), filepath.Join(f.work, name+"-target")
				if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
					t.Fatal(err)
				}
				if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
					TargetPath: target, VolumeCapability: c, Readonly: c == rox}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					_, _ = d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
					_, _ = d.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
				})
				return target
			}
			target := stageFS(src, "src", rw)
			fd, err := os.Create(filepath.Join(target, "data.txt"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fd.WriteString("written before the snapshot"); err != nil {
				t.Fatal(err)
			}
			if err := fd.Sync(); err != nil {
				t.Fatal(err)
			}
			fd.Close()
			// Keep the filesystem busy so its journal is not clean when frozen.
			if err := os.WriteFile(filepath.Join(target, "busy.txt"), make([]byte, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "live", SourceVolumeId: src})
			if err != nil {
				t.Fatal(err)
			}
			r, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "restore", VolumeCapabilities: []*csi.VolumeCapability{rox},
				Parameters: testParams, CapacityRange: &csi.CapacityRange{RequiredBytes: 320 << 20},
				VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
					Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}}})
			if err != nil {
				t.Fatal(err)
			}
			roTarget := stageFS(r.Volume.VolumeId, "restore", rox)
			got, err := os.ReadFile(filepath.Join(roTarget, "data.txt"))
			if err != nil || string(got) != "written before the snapshot" {
				t.Fatalf("data.txt in the read-only restore = %q, %v", got, err)
			}
			if err := os.WriteFile(filepath.Join(roTarget, "new.txt"), []byte("x"), 0o644); err == nil {
				t.Fatal("wrote to a read-only volume")
			}
		})
	}
}
