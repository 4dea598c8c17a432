package csi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/pvpool/pvpool/pkg/volume"
)

// nodeVolume is what a node knows about a volume it staged; persisted in the run directory so a restarted
// plugin finds its daemons, devices and mounts again.
type nodeVolume struct {
	VolumeID    string        `json:"volumeID"`
	ImagesDir   string        `json:"imagesDir"`
	Image       string        `json:"image"`
	ReadOnly    bool          `json:"readOnly"`
	Filesystem  bool          `json:"filesystem"`
	FsType      string        `json:"fsType,omitempty"`
	MountFlags  []string      `json:"mountFlags,omitempty"`
	StagingPath string        `json:"stagingPath"`
	Device      volume.Device `json:"device"`
	// Scratch is the local overlay a read-only Filesystem volume is served through (see daemonConfig).
	Scratch string `json:"scratch,omitempty"`
	// Targets maps published paths to whether they are read-only.
	Targets map[string]bool `json:"targets,omitempty"`

	daemon *volume.Daemon
}

type nodeState struct {
	cfg     Config
	mounter *mount.SafeFormatAndMount
	resizer *mount.ResizeFs

	mu      sync.Mutex
	volumes map[string]*nodeVolume
}

func newNodeState(cfg Config) *nodeState {
	exec := utilexec.New()
	return &nodeState{
		cfg:     cfg,
		mounter: &mount.SafeFormatAndMount{Interface: mount.New(""), Exec: exec},
		resizer: mount.NewResizeFs(exec),
		volumes: map[string]*nodeVolume{},
	}
}

func (n *nodeState) volumeDir(id string) string {
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(n.cfg.RunDir, "volumes", hex.EncodeToString(sum[:12]))
}

func (n *nodeState) get(id string) *nodeVolume {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.volumes[id]
}

func (n *nodeState) save(v *nodeVolume) error {
	if err := os.MkdirAll(n.volumeDir(v.VolumeID), 0o700); err != nil {
		return err
	}
	n.mu.Lock()
	n.volumes[v.VolumeID] = v
	n.mu.Unlock()
	return writeJSONAtomic(filepath.Join(n.volumeDir(v.VolumeID), "state.json"), v)
}

func (n *nodeState) forget(id string) {
	n.mu.Lock()
	delete(n.volumes, id)
	n.mu.Unlock()
	_ = os.RemoveAll(n.volumeDir(id))
}

func (n *nodeState) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, v := range n.volumes {
		if v.daemon != nil {
			v.daemon.Close()
		}
	}
}

// NodeGetCapabilities implements csi.NodeServer.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, c := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo implements csi.NodeServer. Volumes are reachable from every node that mounts the backing
// filesystem, so no topology is reported.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.cfg.NodeID, MaxVolumesPerNode: d.cfg.MaxVolumesPerNode}, nil
}

// NodeStageVolume implements csi.NodeServer: start a daemon for the volume's head image, attach a block
// device to its export and, for the Mount access type, put a filesystem on it (first use) and mount it.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume ID, staging target path and volume capability are required")
	}
	filesystem, err := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()})
	if err != nil {
		return nil, err
	}
	readOnly := isReadOnlyMode(req.GetVolumeCapability())
	unlock, err := d.locks.tryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	n := d.node
	if v := n.get(id); v != nil {
		if v.StagingPath != staging || v.Filesystem != filesystem || v.ReadOnly != readOnly {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is already staged at %s with other capabilities", id, v.StagingPath)
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	loc, key, err := decodeID(volumeIDPrefix, id)
	if err != nil {
		return nil, volumeNotFound(id)
	}
	s, err := d.engine.store(ctx, loc)
	if err != nil {
		return nil, err
	}
	release, err := s.lock(ctx)
	if err != nil {
		return nil, internal(err)
	}
	defer release()
	rec, err := s.loadVolume(key)
	if err != nil {
		return nil, internal(err)
	}
	if rec == nil {
		return nil, volumeNotFound(id)
	}
	stages, err := s.stages(key)
	if err != nil {
		return nil, internal(err)
	}
	for node, st := range stages {
		if node == d.cfg.NodeID {
			continue
		}
		if !readOnly || !st.ReadOnly {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged on node %s; only read-only access may be shared between nodes", id, node)
		}
	}
	if _, err := d.engine.finishFreeze(ctx, s, id, key, rec); err != nil {
		return nil, err
	}
	v := &nodeVolume{VolumeID: id, ImagesDir: s.imagesDir(), Image: s.imagePath(rec.Head), ReadOnly: readOnly,
		Filesystem: filesystem, StagingPath: staging, Targets: map[string]bool{}}
	if m := req.GetVolumeCapability().GetMount(); m != nil {
		v.FsType = m.GetFsType()
		if v.FsType == "" {
			v.FsType = "ext4"
		}
		v.MountFlags = m.GetMountFlags()
	}
	// The stage record goes first: a crash later leaves a record that blocks deletion, never a writer
	// the controller does not know about.
	if err := s.saveStage(key, stageRecord{NodeID: d.cfg.NodeID, ReadOnly: readOnly, AgentSocket: d.cfg.AgentSocket}); err != nil {
		return nil, internal(err)
	}
	if err := n.start(ctx, v); err != nil {
		_ = s.removeStage(key, d.cfg.NodeID)
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// start brings up daemon, device and staging mount for v and persists it; on failure it undoes all.
func (n *nodeState) start(ctx context.Context, v *nodeVolume) (err error) {
	logger := klog.FromContext(ctx).WithValues("volumeID", v.VolumeID)
	dir := n.volumeDir(v.VolumeID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return internal(err)
	}
	if !v.ReadOnly {
		// A daemon that was killed leaks clusters; repairing leaks is safe and keeps images tidy.
		if res, err := volume.Check(ctx, v.Image, true); err != nil {
			logger.Error(err, "Image check failed", "image", v.Image)
		} else if res.LeaksFixed > 0 {
			logger.Info("Repaired leaked clusters", "image", v.Image, "leaks", res.LeaksFixed)
		}
	}
	cfg, err := n.daemonConfig(ctx, v)
	if err != nil {
		return internal(err)
	}
	daemon, err := volume.StartDaemon(ctx, cfg)
	if err != nil {
		return status.Errorf(codes.Internal, "start daemon: %v", err)
	}
	defer func() {
		if err != nil {
			_ = daemon.Stop(context.WithoutCancel(ctx))
		}
	}()
	dev, err := volume.Attach(ctx, volume.AttachConfig{Mode: n.cfg.AttachMode, NBDSocket: daemon.Config().NBDSocket(),
		WorkDir: dir, ReadOnly: cfg.ReadOnly})
	if err != nil {
		return status.Errorf(codes.Internal, "attach device: %v", err)
	}
	defer func() {
		if err != nil {
			_ = dev.Detach(context.WithoutCancel(ctx))
		}
	}()
	v.Device = *dev
	v.daemon = daemon
	if v.Filesystem {
		if err := n.mountStaging(ctx, v); err != nil {
			return err
		}
	}
	if err := n.save(v); err != nil {
		return internal(err)
	}
	logger.Info("Staged volume", "image", v.Image, "device", dev.Path, "mode", dev.Mode, "readOnly", v.ReadOnly)
	return nil
}

// daemonConfig says what the daemon serves. A read-only Filesystem volume is served through a scratch
// overlay in the run directory: the image chain stays read-only, but the filesystem can replay a journal
// left dirty by a live snapshot (mounting it "ro" on a read-only device would fail or, without journal
// replay, miss committed data). The scratch overlay is discarded at unstage.
func (n *nodeState) daemonConfig(ctx context.Context, v *nodeVolume) (volume.DaemonConfig, error) {
	dir := n.volumeDir(v.VolumeID)
	cfg := volume.DaemonConfig{Dir: dir, Image: v.Image, ReadOnly: v.ReadOnly}
	if !v.ReadOnly || !v.Filesystem {
		return cfg, nil
	}
	h, err := volume.ReadHeader(v.Image)
	if err != nil {
		return cfg, err
	}
	scratch := filepath.Join(dir, "scratch.qcow2")
	if err := os.Remove(scratch); err != nil && !errors.Is(err, os.ErrNotExist) {
		return cfg, err
	}
	if err := volume.CreateOverlay(ctx, scratch, v.Image, h.VirtualSize); err != nil {
		return cfg, err
	}
	v.Scratch = scratch
	cfg.Image, cfg.ReadOnly = scratch, false
	return cfg, nil
}

func (n *nodeState) mountStaging(ctx context.Context, v *nodeVolume) error {
	if err := os.MkdirAll(v.StagingPath, 0o750); err != nil {
		return internal(err)
	}
	opts := append([]string{}, v.MountFlags...)
	if v.ReadOnly {
		opts = append(opts, "ro")
	}
	if v.FsType == "xfs" {
		// Clones and restores carry their source's UUID, which xfs refuses to mount twice.
		opts = append(opts, "nouuid")
	}
	if !v.ReadOnly {
		if err := n.growExtOffline(ctx, v); err != nil {
			return err
		}
	}
	if v.ReadOnly && v.Scratch != "" {
		if err := n.formatBlankScratch(v); err != nil {
			return err
		}
	}
	if err := n.mounter.FormatAndMount(v.Device.Path, v.StagingPath, v.FsType, opts); err != nil {
		return status.Errorf(codes.Internal, "format and mount %s: %v", v.Device.Path, err)
	}
	if !v.ReadOnly && v.FsType == "xfs" {
		// xfs only grows mounted; xfs_growfs is a no-op when it already fills the device.
		if _, err := n.resizer.Resize(v.Device.Path, v.StagingPath); err != nil {
			klog.FromContext(ctx).Error(err, "Growing the filesystem failed", "volumeID", v.VolumeID)
		}
	}
	return nil
}

// formatBlankScratch makes a filesystem on a read-only volume that was never written (a pooled volume
// checked out ReadOnlyMany before any pod used it): mount-utils refuses to format what it mounts
// read-only, and the pod should see an empty filesystem rather than fail. The filesystem is written to
// the scratch overlay only, so the volume's own image stays untouched.
func (n *nodeState) formatBlankScratch(v *nodeVolume) error {
	format, err := n.mounter.GetDiskFormat(v.Device.Path)
	if err != nil {
		return status.Errorf(codes.Internal, "probing %s: %v", v.Device.Path, err)
	}
	if format != "" {
		return nil
	}
	fsType := v.FsType
	if fsType == "" {
		fsType = "ext4"
	}
	args := []string{v.Device.Path}
	if fsType == "ext4" || fsType == "ext3" {
		args = append([]string{"-F", "-m0"}, args...)
	}
	if out, err := n.mounter.Exec.Command("mkfs."+fsType, args...).CombinedOutput(); err != nil {
		return status.Errorf(codes.Internal, "making %s on blank read-only volume %s: %v: %s", fsType, v.VolumeID, err, out)
	}
	return nil
}

// growExtOffline grows an ext filesystem that is smaller than its device (the image was expanded while
// unstaged) before it is mounted. Growing it mounted needs CAP_SYS_RESOURCE, which nodes may not grant.
func (n *nodeState) growExtOffline(ctx context.Context, v *nodeVolume) error {
	fsSize, err := extSuperblockSize(v.Device.Path)
	if err != nil {
		return nil // not ext (or not formatted yet)
	}
	devSize, err := volume.DeviceSize(ctx, v.Device.Path)
	if err != nil {
		return internal(err)
	}
	// resize2fs may leave a partial last block group unused; a MiB of slack avoids checking every stage.
	if devSize-fsSize < mib {
		return nil
	}
	// resize2fs insists on a freshly checked filesystem; exit codes 0 and 1 mean clean or fixed.
	if out, err := n.mounter.Exec.Command("e2fsck", "-f", "-p", v.Device.Path).CombinedOutput(); err != nil {
		if ee, ok := err.(utilexec.ExitError); !ok || ee.ExitStatus() > 1 {
			return status.Errorf(codes.Internal, "e2fsck %s: %v: %s", v.Device.Path, err, out)
		}
	}
	if out, err := n.mounter.Exec.Command("resize2fs", v.Device.Path).CombinedOutput(); err != nil {
		return status.Errorf(codes.Internal, "resize2fs %s: %v: %s", v.Device.Path, err, out)
	}
	klog.FromContext(ctx).Info("Grew filesystem", "volumeID", v.VolumeID, "device", v.Device.Path, "from", fsSize, "to", devSize)
	return nil
}

// NodeUnstageVolume implements csi.NodeServer.
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and staging target path are required")
	}
	unlock, err := d.locks.tryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	n := d.node
	v := n.get(id)
	if v == nil {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if err := n.stop(ctx, v); err != nil {
		return nil, err
	}
	if loc, key, err := decodeID(volumeIDPrefix, id); err == nil {
		if s, err := d.engine.store(ctx, loc); err == nil {
			release, err := s.lock(ctx)
			if err != nil {
				return nil, internal(err)
			}
			err = s.removeStage(key, d.cfg.NodeID)
			release()
			if err != nil {
				return nil, internal(err)
			}
		}
	}
	n.forget(id)
	klog.FromContext(ctx).Info("Unstaged volume", "volumeID", id)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// stop tears down in the required order: mounts, device, daemon.
func (n *nodeState) stop(ctx context.Context, v *nodeVolume) error {
	for target := range v.Targets {
		if err := mount.CleanupMountPoint(target, n.mounter, true); err != nil {
			return status.Errorf(codes.Internal, "unmount %s: %v", target, err)
		}
	}
	if v.Filesystem {
		if err := mount.CleanupMountPoint(v.StagingPath, n.mounter, true); err != nil {
			return status.Errorf(codes.Internal, "unmount %s: %v", v.StagingPath, err)
		}
		// kubelet owns the staging directory.
		_ = os.MkdirAll(v.StagingPath, 0o750)
	}
	if err := v.Device.Detach(ctx); err != nil {
		return status.Errorf(codes.Internal, "detach %s: %v", v.Device.Path, err)
	}
	if v.daemon == nil {
		if d, err := volume.AdoptDaemon(ctx, volume.DaemonConfig{Dir: n.volumeDir(v.VolumeID), Image: v.Image}); err == nil {
			v.daemon = d
		}
	}
	if v.daemon != nil {
		if err := v.daemon.Stop(ctx); err != nil {
			return status.Errorf(codes.Internal, "stop daemon: %v", err)
		}
	}
	return nil
}

// NodePublishVolume implements csi.NodeServer.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	if id == "" || target == "" || staging == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume ID, target path, staging target path and volume capability are required")
	}
	filesystem, err := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()})
	if err != nil {
		return nil, err
	}
	unlock, err := d.locks.tryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	n := d.node
	v := n.get(id)
	if v == nil {
		if _, _, err := d.lookupVolume(ctx, id); err != nil {
			return nil, err
		}
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", id)
	}
	if v.Filesystem != filesystem {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s was staged with another access type", id)
	}
	readOnly := req.GetReadonly() || v.ReadOnly
	if ro, ok := v.Targets[target]; ok {
		if ro != readOnly {
			return nil, status.Errorf(codes.AlreadyExists, "%s is already published with readOnly=%v", target, ro)
		}
		if mounted, err := n.mounter.IsMountPoint(target); err == nil && mounted {
			return &csi.NodePublishVolumeResponse{}, nil
		}
	}
	if req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		for other := range v.Targets {
			if other != target {
				return nil, status.Errorf(codes.FailedPrecondition, "volume %s is single-writer and already published at %s", id, other)
			}
		}
	}
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}
	source := v.StagingPath
	if filesystem {
		if err := os.MkdirAll(target, 0o750); err != nil {
			return nil, internal(err)
		}
	} else {
		source = v.Device.Path
		if err := makeFile(target); err != nil {
			return nil, internal(err)
		}
	}
	if err := n.mounter.Mount(source, target, "", opts); err != nil {
		return nil, status.Errorf(codes.Internal, "bind %s to %s: %v", source, target, err)
	}
	v.Targets[target] = readOnly
	if err := n.save(v); err != nil {
		return nil, internal(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// makeFile makes path a regular file to bind a device onto; an empty directory there (as some callers
// pre-create) is replaced.
func makeFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	if st, err := os.Lstat(path); err == nil {
		if !st.IsDir() {
			return nil
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("target %s is a non-empty directory: %w", path, err)
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// NodeUnpublishVolume implements csi.NodeServer.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" || target == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and target path are required")
	}
	unlock, err := d.locks.tryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := mount.CleanupMountPoint(target, d.node.mounter, true); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
	}
	if v := d.node.get(id); v != nil {
		if _, ok := v.Targets[target]; ok {
			delete(v.Targets, target)
			if err := d.node.save(v); err != nil {
				return nil, internal(err)
			}
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats implements csi.NodeServer.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" || path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and volume path are required")
	}
	v := d.node.get(id)
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume path %s does not exist", path)
	} else if err != nil {
		return nil, internal(err)
	}
	if !v.Device.Healthy() || (v.daemon != nil && !v.daemon.Alive()) {
		klog.FromContext(ctx).Info("Staged volume is unhealthy", "volumeID", id, "device", v.Device.Path)
	}
	if !st.IsDir() {
		size, err := volume.DeviceSize(ctx, v.Device.Path)
		if err != nil {
			return nil, internal(err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, internal(err)
	}
	bsize := int64(fs.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(fs.Blocks) * bsize, Available: int64(fs.Bavail) * bsize,
			Used: int64(fs.Blocks-fs.Bfree) * bsize},
		{Unit: csi.VolumeUsage_INODES, Total: int64(fs.Files), Available: int64(fs.Ffree), Used: int64(fs.Files - fs.Ffree)},
	}}, nil
}

// NodeExpandVolume implements csi.NodeServer: the image grew offline, so the device already has the new
// size when staged; a filesystem on it is grown here.
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" || path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and volume path are required")
	}
	unlock, err := d.locks.tryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v := d.node.get(id)
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
	}
	size, err := volume.DeviceSize(ctx, v.Device.Path)
	if err != nil {
		return nil, internal(err)
	}
	if req.GetCapacityRange().GetRequiredBytes() > size {
		return nil, status.Errorf(codes.FailedPrecondition, "device has %d bytes, %d requested: unstage the volume so it can be expanded", size, req.GetCapacityRange().GetRequiredBytes())
	}
	if v.Filesystem && !v.ReadOnly {
		// ext filesystems grow at stage time; only one still smaller than its device (or xfs) is resized.
		need := true
		if fsSize, err := extSuperblockSize(v.Device.Path); err == nil {
			need = size-fsSize >= mib
		}
		if need {
			if _, err := d.node.resizer.Resize(v.Device.Path, v.StagingPath); err != nil {
				return nil, status.Errorf(codes.Internal, "grow filesystem: %v", err)
			}
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// NodeGetVolumeHealth implements csi.NodeServer: a staged volume is inaccessible when its daemon or the
// bridge behind its block device died.
func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	v := d.node.get(id)
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	if p := req.GetVolumePublishPath(); p != "" {
		if _, err := os.Stat(p); err != nil {
			return nil, status.Errorf(codes.NotFound, "volume path %s: %v", p, err)
		}
	}
	health := &csi.VolumeHealth{VolumeId: id}
	switch {
	case v.daemon == nil || !v.daemon.Alive():
		health.HealthStatuses = append(health.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "DaemonGone",
			Message: "the qemu-storage-daemon serving the volume is not running"})
	case !v.Device.Healthy():
		health.HealthStatuses = append(health.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "DeviceGone",
			Message: fmt.Sprintf("block device %s lost its connection to the daemon", v.Device.Path)})
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: health}, nil
}
