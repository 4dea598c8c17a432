package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pvpool/pvpool/pkg/volume"
)

var (
	blockRWO = []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}
	testParams = map[string]string{"backingClaimName": "backing-pvc", "backingClaimNamespace": "default", "basePath": "volumes"}
)

func requireQemuTools(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (hack/install-node-deps.sh installs it)", bin)
		}
	}
}

func newTestDriver(t *testing.T, maxChain int) (*Driver, string) {
	t.Helper()
	backing := t.TempDir()
	d, err := NewDriver(Config{Controller: true, Locator: DirLocator{Dir: backing}, MaxChainLength: maxChain})
	if err != nil {
		t.Fatal(err)
	}
	return d, backing
}

func mustCreate(t *testing.T, d *Driver, name string, size int64, src *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	resp, err := d.CreateVolume(t.Context(), &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: blockRWO,
		Parameters: testParams, CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeContentSource: src})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

// headOf returns the image a volume currently writes to.
func headOf(t *testing.T, d *Driver, id string) string {
	t.Helper()
	s, rec, err := d.lookupVolume(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s.imagePath(rec.Head)
}

func runQemuIO(image string, cmds ...string) ([]byte, error) {
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return exec.Command("qemu-io", append(args, image)...).CombinedOutput()
}

func qemuIO(t *testing.T, image string, cmds ...string) {
	t.Helper()
	out, err := runQemuIO(image, cmds...)
	if err != nil || strings.Contains(string(out), "verification failed") || strings.Contains(string(out), "failed") {
		t.Fatalf("qemu-io %v on %s: %v: %s", cmds, image, err, out)
	}
}

func imageFiles(t *testing.T, backing string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(backing, "volumes", imagesDirName))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestCreateVolumeValidationAndIdempotency(t *testing.T) {
	requireQemuTools(t)
	d, backing := newTestDriver(t, 0)
	ctx := t.Context()
	v := mustCreate(t, d, "pvc-1", 10<<20, nil)
	if v.CapacityBytes != 10<<20 {
		t.Errorf("capacity = %d", v.CapacityBytes)
	}
	again := mustCreate(t, d, "pvc-1", 10<<20, nil)
	if again.VolumeId != v.VolumeId {
		t.Errorf("retry returned %s, want %s", again.VolumeId, v.VolumeId)
	}
	if n := len(imageFiles(t, backing)); n != 1 {
		t.Errorf("retry created images: %d", n)
	}
	_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: blockRWO, Parameters: testParams,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 20 << 20}})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("same name, other size: %v, want AlreadyExists", err)
	}
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-2", VolumeCapabilities: blockRWO,
		Parameters: map[string]string{"bogus": "1"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown parameter: %v, want InvalidArgument", err)
	}
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-3", VolumeCapabilities: []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("RWX: %v, want InvalidArgument", err)
	}
	// The image is thin: a 1 TiB volume takes almost no space.
	big := mustCreate(t, d, "pvc-big", 1<<40, nil)
	info, err := volume.Info(ctx, headOf(t, d, big.VolumeId))
	if err != nil || info.VirtualSize != 1<<40 || info.ActualSize > 10<<20 {
		t.Errorf("1 TiB image: %+v, %v", info, err)
	}
	// Metadata lives on the backing filesystem: a new driver (a restarted plugin) sees the volume.
	d2, err := NewDriver(Config{Controller: true, Locator: DirLocator{Dir: backing}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := d2.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(list.Entries) != 2 {
		t.Fatalf("ListVolumes after restart = %v, %v", list, err)
	}
	if _, err := d2.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.VolumeId,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 30 << 20}}); err != nil {
		t.Fatal(err)
	}
	if info, err := volume.Info(ctx, headOf(t, d2, v.VolumeId)); err != nil || info.VirtualSize != 30<<20 {
		t.Errorf("expanded image: %+v, %v", info, err)
	}
}

func TestSnapshotRestoreCloneAndGarbageCollection(t *testing.T) {
	requireQemuTools(t)
	d, backing := newTestDriver(t, 0)
	ctx := t.Context()
	src := mustCreate(t, d, "src", 4<<20, nil)
	qemuIO(t, headOf(t, d, src.VolumeId), "write -P 0x11 0 4M")

	snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	retry, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src.VolumeId})
	if err != nil || retry.Snapshot.SnapshotId != snap.Snapshot.SnapshotId {
		t.Fatalf("retried CreateSnapshot = %v, %v", retry, err)
	}
	// The source keeps changing after the snapshot.
	qemuIO(t, headOf(t, d, src.VolumeId), "write -P 0x22 0 1M")

	restored := mustCreate(t, d, "restored", 8<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}})
	qemuIO(t, headOf(t, d, restored.VolumeId), "read -P 0x11 0 4M", "read -P 0 4M 4M")

	clone := mustCreate(t, d, "clone", 6<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.VolumeId}}})
	qemuIO(t, headOf(t, d, clone.VolumeId), "read -P 0x22 0 1M", "read -P 0x11 1M 3M", "read -P 0 4M 2M")
	// Clone and source are independent.
	qemuIO(t, headOf(t, d, clone.VolumeId), "write -P 0x33 0 64k")
	qemuIO(t, headOf(t, d, src.VolumeId), "read -P 0x22 0 64k")

	// Source gone, snapshot gone: the clone and the restored volume still read their data, and a clone
	// of the clone at a bigger size reads the same data then zeroes.
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.VolumeId}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.Snapshot.SnapshotId}); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, headOf(t, d, clone.VolumeId), "read -P 0x33 0 64k", "read -P 0x11 1M 3M")
	qemuIO(t, headOf(t, d, restored.VolumeId), "read -P 0x11 0 4M")
	cc := mustCreate(t, d, "clone-of-clone", 16<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: clone.VolumeId}}})
	qemuIO(t, headOf(t, d, cc.VolumeId), "read -P 0x33 0 64k", "read -P 0x11 1M 3M", "read -P 0 6M 10M")

	// Every image left is needed by a live volume.
	s, _, err := d.lookupVolume(ctx, clone.VolumeId)
	if err != nil {
		t.Fatal(err)
	}
	var roots []string
	for _, id := range []string{clone.VolumeId, restored.VolumeId, cc.VolumeId} {
		roots = append(roots, headOf(t, d, id))
	}
	reach, err := reachable(roots)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range imageFiles(t, backing) {
		if !reach[s.imagePath(name)] {
			t.Errorf("image %s is garbage but was kept", name)
		}
	}
	for _, id := range []string{clone.VolumeId, restored.VolumeId, cc.VolumeId} {
		if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if left := imageFiles(t, backing); len(left) != 0 {
		t.Errorf("images left after deleting everything: %v", left)
	}
}

func TestInterruptedFreezeIsFinished(t *testing.T) {
	requireQemuTools(t)
	d, _ := newTestDriver(t, 0)
	ctx := t.Context()
	v := mustCreate(t, d, "vol", 2<<20, nil)
	oldHead := headOf(t, d, v.VolumeId)
	qemuIO(t, oldHead, "write -P 0x44 0 1M")
	// Simulate a crash right after the intent was written and the overlay created.
	s, rec, err := d.lookupVolume(ctx, v.VolumeId)
	if err != nil {
		t.Fatal(err)
	}
	rec.Pending = &pendingFreeze{NewHead: newImageName()}
	if err := volume.CreateOverlay(ctx, s.imagePath(rec.Pending.NewHead), rec.Head, rec.Size); err != nil {
		t.Fatal(err)
	}
	_, key, _ := decodeID(volumeIDPrefix, v.VolumeId)
	if err := s.saveVolume(key, rec); err != nil {
		t.Fatal(err)
	}
	snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "after-crash", SourceVolumeId: v.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	_, rec, _ = d.lookupVolume(ctx, v.VolumeId)
	if rec.Pending != nil {
		t.Fatal("pending freeze left behind")
	}
	// The interrupted freeze and the snapshot's own freeze each froze one image; the chain is intact.
	chain, err := volume.Chain(headOf(t, d, v.VolumeId), volume.BackingOf)
	if err != nil || len(chain) != 3 || chain[2] != oldHead {
		t.Fatalf("chain = %v, %v", chain, err)
	}
	r := mustCreate(t, d, "restore", 2<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}})
	qemuIO(t, headOf(t, d, r.VolumeId), "read -P 0x44 0 1M")
}

func TestChainsStayBounded(t *testing.T) {
	requireQemuTools(t)
	const bound = 3
	d, _ := newTestDriver(t, bound)
	ctx := t.Context()
	v := mustCreate(t, d, "vol", 2<<20, nil)
	var snaps []string
	for i := 0; i < 6; i++ {
		qemuIO(t, headOf(t, d, v.VolumeId), fmt.Sprintf("write -P %#x %d 64k", 0x50+i, i*64<<10))
		snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("s%d", i), SourceVolumeId: v.VolumeId})
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap.Snapshot.SnapshotId)
		if n, err := chainLength(headOf(t, d, v.VolumeId)); err != nil || n > bound {
			t.Fatalf("after snapshot %d the chain has %d images (bound %d), %v", i, n, bound, err)
		}
	}
	// Every snapshot still holds exactly what was written before it.
	for i, id := range snaps {
		r := mustCreate(t, d, fmt.Sprintf("r%d", i), 2<<20, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}})
		head := headOf(t, d, r.VolumeId)
		if n, err := chainLength(head); err != nil || n > bound {
			t.Fatalf("restored volume chain has %d images, %v", n, err)
		}
		for j := 0; j <= i; j++ {
			qemuIO(t, head, fmt.Sprintf("read -P %#x %d 64k", 0x50+j, j*64<<10))
		}
		qemuIO(t, head, fmt.Sprintf("read -P 0 %d 64k", (i+1)*64<<10))
	}
}

func TestControllerVolumeHealth(t *testing.T) {
	requireQemuTools(t)
	d, _ := newTestDriver(t, 0)
	ctx := t.Context()
	v := mustCreate(t, d, "healthy", 2<<20, nil)
	snapResp, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: v.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	h, err := d.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.VolumeId})
	if err != nil || len(h.VolumeHealth.HealthStatuses) != 0 {
		t.Fatalf("health = %v, %v", h, err)
	}
	// Lose the frozen image under the volume's head.
	s, _, _ := d.lookupVolume(ctx, v.VolumeId)
	_, key, _ := decodeID(snapshotIDPrefix, snapResp.Snapshot.SnapshotId)
	snap, _ := s.loadSnapshot(key)
	if err := os.Remove(s.imagePath(snap.Image)); err != nil {
		t.Fatal(err)
	}
	list, err := d.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
	if err != nil || len(list.Entries) != 1 || len(list.Entries[0].HealthStatuses) != 1 ||
		list.Entries[0].HealthStatuses[0].Status != csi.VolumeHealthErrorType_DATA_LOSS {
		t.Fatalf("health list = %v, %v", list, err)
	}
	if _, err := d.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: "v1~~~~missing"}); status.Code(err) != codes.NotFound {
		t.Errorf("health of a missing volume: %v", err)
	}
}

// failingLocator cannot reach any backing volume.
type failingLocator struct{ err error }

func (l failingLocator) Root(context.Context, BackingClaim) (string, error) { return "", l.err }
func (l failingLocator) Roots(context.Context) ([]string, error)            { return nil, l.err }

func TestBackingVolumeErrorsKeepTheLocatorsCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"claim that cannot serve", status.Error(codes.FailedPrecondition, "backing claim default/backing-pvc is not ReadWriteMany"), codes.FailedPrecondition},
		{"holder starting", status.Error(codes.Unavailable, "holder pod default/pvpool-holder-x is Pending"), codes.Unavailable},
		{"plain error", errors.New("connection refused"), codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := NewDriver(Config{Controller: true, Locator: failingLocator{err: tc.err}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: blockRWO,
				Parameters: testParams, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
			if status.Code(err) != tc.want {
				t.Fatalf("CreateVolume: %v, want code %s", err, tc.want)
			}
			_, err = d.GetCapacity(context.Background(), &csi.GetCapacityRequest{Parameters: testParams})
			if status.Code(err) != tc.want {
				t.Fatalf("GetCapacity: %v, want code %s", err, tc.want)
			}
		})
	}
}
