package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	pvcsi "github.com/pvpool/pvpool/pkg/csi"
	"github.com/pvpool/pvpool/pkg/volume"
)

var blockCapability = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// benchDriver drives one in-process pvpool-csi driver on a directory backing store, as a StorageClass with
// basePath would.
type benchDriver struct {
	d        *pvcsi.Driver
	backing  string
	basePath string
	// work holds staging and publish paths; runDir the node's daemon state.
	work, runDir string
	node         bool
	staged       map[string]bool
}

func newBenchDriver(ctx context.Context, backing, basePath, work string, node bool, mode volume.AttachMode, maxChain int) (*benchDriver, error) {
	b := &benchDriver{backing: backing, basePath: basePath, work: work, node: node, staged: map[string]bool{}}
	cfg := pvcsi.Config{Controller: true, Locator: pvcsi.DirLocator{Dir: backing}, MaxChainLength: maxChain}
	if node {
		// Daemon sockets must be on a local filesystem with short paths.
		runDir, err := os.MkdirTemp("/run", "pvpool-bench-")
		if err != nil {
			return nil, err
		}
		b.runDir = runDir
		cfg.Node, cfg.NodeID, cfg.RunDir, cfg.AttachMode = true, "bench-node", runDir, mode
	}
	d, err := pvcsi.NewDriver(cfg)
	if err != nil {
		return nil, err
	}
	b.d = d
	return b, nil
}

func (b *benchDriver) params() map[string]string { return map[string]string{"basePath": b.basePath} }

func (b *benchDriver) create(ctx context.Context, name string, size int64, src *csi.VolumeContentSource) (string, error) {
	req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{blockCapability},
		Parameters: b.params(), VolumeContentSource: src}
	if size > 0 {
		req.CapacityRange = &csi.CapacityRange{RequiredBytes: size}
	}
	resp, err := b.d.CreateVolume(ctx, req)
	if err != nil {
		return "", fmt.Errorf("create volume %s: %w", name, err)
	}
	return resp.Volume.VolumeId, nil
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func (b *benchDriver) snapshot(ctx context.Context, name, volumeID string) (string, error) {
	resp, err := b.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volumeID})
	if err != nil {
		return "", fmt.Errorf("snapshot %s: %w", name, err)
	}
	return resp.Snapshot.SnapshotId, nil
}

func (b *benchDriver) expand(ctx context.Context, volumeID string, size int64) error {
	_, err := b.d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: volumeID,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: blockCapability})
	return err
}

func (b *benchDriver) deleteVolume(ctx context.Context, id string) error {
	_, err := b.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	return err
}

func (b *benchDriver) deleteSnapshot(ctx context.Context, id string) error {
	_, err := b.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
	return err
}

// headImage returns the image a volume reads and writes, from the store's per-volume record (the
// driver's only state; see pkg/csi/store.go). Volume names here are plain, so the record is named after
// the volume.
func (b *benchDriver) headImage(name string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(b.backing, b.basePath, "pvpool-volumes", name+".json"))
	if err != nil {
		return "", err
	}
	var rec struct {
		Head string `json:"head"`
	}
	if err := json.Unmarshal(raw, &rec); err != nil || rec.Head == "" {
		return "", fmt.Errorf("volume record of %s has no head image: %v", name, err)
	}
	return filepath.Join(b.backing, b.basePath, "pvpool-images", rec.Head), nil
}

// chainLength is the number of images a volume's reads may go through.
func (b *benchDriver) chainLength(name string) (int, error) {
	head, err := b.headImage(name)
	if err != nil {
		return 0, err
	}
	chain, err := volume.Chain(head, volume.BackingOf)
	return len(chain), err
}

// writeData fills the first n bytes of an unstaged volume with non-zero data, straight into its head
// image, so every cluster is allocated.
func (b *benchDriver) writeData(ctx context.Context, name string, n int64) error {
	head, err := b.headImage(name)
	if err != nil {
		return err
	}
	const chunk = 256 << 20
	args := []string{"-f", "qcow2"}
	for off := int64(0); off < n; off += chunk {
		l := min(chunk, n-off)
		args = append(args, "-c", fmt.Sprintf("write -q -P 0x5a %d %d", off, l))
	}
	args = append(args, head)
	out, err := exec.CommandContext(ctx, "qemu-io", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-io on %s: %v: %s", head, err, out)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		return fmt.Errorf("qemu-io on %s: %s", head, s)
	}
	return nil
}

func (b *benchDriver) stagingPath(id string) string {
	return filepath.Join(b.work, "staging", strings.ReplaceAll(id, "~", "_"))
}

func (b *benchDriver) publishPath(id string) string {
	return filepath.Join(b.work, "publish", strings.ReplaceAll(id, "~", "_"))
}

// stage stages and publishes a Block volume as kubelet would and returns the published device path.
func (b *benchDriver) stage(ctx context.Context, id string) (string, error) {
	staging, target := b.stagingPath(id), b.publishPath(id)
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return "", err
	}
	if _, err := b.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: blockCapability}); err != nil {
		return "", fmt.Errorf("stage: %w", err)
	}
	b.staged[id] = true
	if _, err := b.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: blockCapability}); err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	return target, nil
}

func (b *benchDriver) unstage(ctx context.Context, id string) error {
	if _, err := b.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: b.publishPath(id)}); err != nil {
		return fmt.Errorf("unpublish: %w", err)
	}
	if _, err := b.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: b.stagingPath(id)}); err != nil {
		return fmt.Errorf("unstage: %w", err)
	}
	delete(b.staged, id)
	return nil
}

// close unstages whatever is still staged (a failed or interrupted run), so no daemon, FUSE mount or
// loop device outlives the benchmark.
func (b *benchDriver) close() {
	ctx := context.Background()
	for id := range b.staged {
		if err := b.unstage(ctx, id); err != nil {
			progress("cleanup of %s: %v", id, err)
		}
	}
	if b.runDir != "" {
		_ = os.RemoveAll(b.runDir)
	}
}
