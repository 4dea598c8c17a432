package csi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pvpool/pvpool/pkg/volume"
)

// ControllerGetCapabilities implements csi.ControllerServer.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume implements csi.ControllerServer.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	filesystem, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	loc, err := parseParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	key := keyFor(req.GetName())
	id := encodeID(volumeIDPrefix, loc, key)
	s, unlock, err := d.lockStore(ctx, loc, id)
	if err != nil {
		return nil, err
	}
	defer unlock()

	src := req.GetVolumeContentSource()
	var srcSnapshotID, srcVolumeID string
	switch {
	case src.GetSnapshot() != nil:
		srcSnapshotID = src.GetSnapshot().GetSnapshotId()
	case src.GetVolume() != nil:
		srcVolumeID = src.GetVolume().GetVolumeId()
	}

	if existing, err := s.loadVolume(key); err != nil {
		return nil, internal(err)
	} else if existing != nil {
		if existing.Name != req.GetName() {
			return nil, status.Errorf(codes.AlreadyExists, "volume key %s is taken by %q", key, existing.Name)
		}
		if !capacityFits(existing.Size, req.GetCapacityRange()) {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with %d bytes", req.GetName(), existing.Size)
		}
		if existing.SourceSnapshot != srcSnapshotID || existing.SourceVolume != srcVolumeID {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with a different content source", req.GetName())
		}
		if _, err := d.engine.finishFreeze(ctx, s, id, key, existing); err != nil {
			return nil, err
		}
		return &csi.CreateVolumeResponse{Volume: volumeResponse(existing, src)}, nil
	}

	rec := &volumeRecord{ID: id, Name: req.GetName(), Filesystem: filesystem, SourceSnapshot: srcSnapshotID,
		SourceVolume: srcVolumeID, CreatedAt: time.Now().UTC()}
	switch {
	case srcSnapshotID != "":
		snapLoc, snapKey, err := decodeID(snapshotIDPrefix, srcSnapshotID)
		if err != nil || snapLoc != loc {
			return nil, status.Errorf(codes.NotFound, "snapshot %s not found in this storage class's backing volume", srcSnapshotID)
		}
		snap, err := s.loadSnapshot(snapKey)
		if err != nil {
			return nil, internal(err)
		}
		if snap == nil {
			return nil, status.Errorf(codes.NotFound, "snapshot %s not found", srcSnapshotID)
		}
		if rec.Size, err = capacityFor(req.GetCapacityRange(), snap.Size); err != nil {
			return nil, err
		}
		if rec.Head, err = d.engine.newImageOn(ctx, s, snap.Image, rec.Size); err != nil {
			return nil, err
		}
	case srcVolumeID != "":
		srcLoc, srcKey, err := decodeID(volumeIDPrefix, srcVolumeID)
		if err != nil || srcLoc != loc {
			return nil, status.Errorf(codes.NotFound, "volume %s not found in this storage class's backing volume", srcVolumeID)
		}
		unlockSrc, err := d.locks.tryLock(srcVolumeID)
		if err != nil {
			return nil, err
		}
		defer unlockSrc()
		srcRec, err := s.loadVolume(srcKey)
		if err != nil {
			return nil, internal(err)
		}
		if srcRec == nil {
			return nil, volumeNotFound(srcVolumeID)
		}
		if rec.Size, err = capacityFor(req.GetCapacityRange(), srcRec.Size); err != nil {
			return nil, err
		}
		frozen, err := d.engine.freeze(ctx, s, srcVolumeID, srcKey, srcRec)
		if err != nil {
			return nil, err
		}
		if rec.Head, err = d.engine.newImageOn(ctx, s, frozen, rec.Size); err != nil {
			return nil, err
		}
		if err := d.engine.boundChain(ctx, s, srcKey, srcRec); err != nil {
			return nil, internal(err)
		}
	default:
		if rec.Size, err = capacityFor(req.GetCapacityRange(), 0); err != nil {
			return nil, err
		}
		rec.Head = newImageName()
		if err := volume.CreateImage(ctx, s.imagePath(rec.Head), rec.Size); err != nil {
			return nil, status.Errorf(codes.Internal, "create image: %v", err)
		}
	}
	if err := s.saveVolume(key, rec); err != nil {
		_ = os.Remove(s.imagePath(rec.Head))
		return nil, internal(err)
	}
	return &csi.CreateVolumeResponse{Volume: volumeResponse(rec, src)}, nil
}

func volumeResponse(rec *volumeRecord, src *csi.VolumeContentSource) *csi.Volume {
	return &csi.Volume{VolumeId: rec.ID, CapacityBytes: rec.Size, ContentSource: src}
}

// DeleteVolume implements csi.ControllerServer.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	loc, key, err := decodeID(volumeIDPrefix, id)
	if err != nil {
		// Not one of ours, so it does not exist.
		return &csi.DeleteVolumeResponse{}, nil
	}
	s, unlock, err := d.lockStore(ctx, loc, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := s.loadVolume(key)
	if err != nil {
		return nil, internal(err)
	}
	if rec == nil {
		return &csi.DeleteVolumeResponse{}, nil
	}
	stages, err := s.stages(key)
	if err != nil {
		return nil, internal(err)
	}
	for node := range stages {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still staged on node %s", id, node)
	}
	// Finish an interrupted freeze first: snapshots may depend on the image it froze.
	if _, err := d.engine.finishFreeze(ctx, s, id, key, rec); err != nil {
		return nil, err
	}
	if err := os.Remove(s.volumeFile(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, internal(err)
	}
	d.engine.gc(ctx, s)
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	if _, _, err := d.lookupVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	if _, err := parseParameters(req.GetParameters()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if _, err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// lookupVolume reads a volume's record without locking.
func (d *Driver) lookupVolume(ctx context.Context, id string) (*store, *volumeRecord, error) {
	loc, key, err := decodeID(volumeIDPrefix, id)
	if err != nil {
		return nil, nil, volumeNotFound(id)
	}
	s, err := d.engine.store(ctx, loc)
	if err != nil {
		return nil, nil, err
	}
	rec, err := s.loadVolume(key)
	if err != nil {
		return nil, nil, internal(err)
	}
	if rec == nil {
		return nil, nil, volumeNotFound(id)
	}
	return s, rec, nil
}

// ControllerExpandVolume implements csi.ControllerServer. Growing a qcow2 image rewrites its header only.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	loc, key, err := decodeID(volumeIDPrefix, id)
	if err != nil {
		return nil, volumeNotFound(id)
	}
	s, unlock, err := d.lockStore(ctx, loc, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := s.loadVolume(key)
	if err != nil {
		return nil, internal(err)
	}
	if rec == nil {
		return nil, volumeNotFound(id)
	}
	filesystem := rec.Filesystem
	if c := req.GetVolumeCapability(); c != nil {
		filesystem = c.GetMount() != nil
	}
	size, err := capacityFor(req.GetCapacityRange(), 0)
	if err != nil {
		return nil, err
	}
	if size <= rec.Size {
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: rec.Size, NodeExpansionRequired: filesystem}, nil
	}
	stages, err := s.stages(key)
	if err != nil {
		return nil, internal(err)
	}
	for node := range stages {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is in use on node %s; it is expanded once unstaged", id, node)
	}
	if _, err := d.engine.finishFreeze(ctx, s, id, key, rec); err != nil {
		return nil, err
	}
	if err := volume.ResizeImage(ctx, s.imagePath(rec.Head), size); err != nil {
		return nil, status.Errorf(codes.Internal, "resize: %v", err)
	}
	rec.Size = size
	if err := s.saveVolume(key, rec); err != nil {
		return nil, internal(err)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: filesystem}, nil
}

// CreateSnapshot implements csi.ControllerServer.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	srcID := req.GetSourceVolumeId()
	if srcID == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume ID is required")
	}
	loc, srcKey, err := decodeID(volumeIDPrefix, srcID)
	if err != nil {
		return nil, volumeNotFound(srcID)
	}
	key := keyFor(req.GetName())
	id := encodeID(snapshotIDPrefix, loc, key)
	s, unlock, err := d.lockStore(ctx, loc, id, srcID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if existing, err := s.loadSnapshot(key); err != nil {
		return nil, internal(err)
	} else if existing != nil {
		if existing.Name != req.GetName() || existing.SourceVolumeID != srcID {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists for volume %s", req.GetName(), existing.SourceVolumeID)
		}
		return &csi.CreateSnapshotResponse{Snapshot: snapshotResponse(existing)}, nil
	}
	src, err := s.loadVolume(srcKey)
	if err != nil {
		return nil, internal(err)
	}
	if src == nil {
		return nil, volumeNotFound(srcID)
	}
	frozen, err := d.engine.freeze(ctx, s, srcID, srcKey, src)
	if err != nil {
		return nil, err
	}
	rec := &snapshotRecord{ID: id, Name: req.GetName(), SourceVolumeID: srcID, Image: frozen, Size: src.Size, CreatedAt: time.Now().UTC()}
	if err := s.saveSnapshot(key, rec); err != nil {
		return nil, internal(err)
	}
	if err := d.engine.boundChain(ctx, s, srcKey, src); err != nil {
		return nil, internal(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: snapshotResponse(rec)}, nil
}

func snapshotResponse(rec *snapshotRecord) *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: rec.ID, SourceVolumeId: rec.SourceVolumeID, SizeBytes: rec.Size,
		CreationTime: timestamppb.New(rec.CreatedAt), ReadyToUse: true}
}

// DeleteSnapshot implements csi.ControllerServer.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is required")
	}
	loc, key, err := decodeID(snapshotIDPrefix, id)
	if err != nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	s, unlock, err := d.lockStore(ctx, loc, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := os.Remove(s.snapshotFile(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, internal(err)
	}
	d.engine.gc(ctx, s)
	return &csi.DeleteSnapshotResponse{}, nil
}

// stores finds every store under the backing roots (a store is a directory holding pvpool-volumes).
func (d *Driver) stores(ctx context.Context) ([]*store, error) {
	roots, err := d.cfg.Locator.Roots(ctx)
	if err != nil {
		return nil, backingError(err, "backing volumes")
	}
	var out []*store
	for _, root := range roots {
		// A directory that vanishes or cannot be read while listing only leaves its stores out.
		err := walkStores(root, true, func(dir string) error {
			out = append(out, &store{dir: dir})
			return nil
		})
		if err != nil {
			return nil, internal(err)
		}
	}
	return out, nil
}

// walkStores calls visit with every store directory (one holding pvpool-volumes) at most four levels
// under root. With skipUnreadable, directories that cannot be read are passed over; otherwise the
// walk stops at the first one, with its error.
func walkStores(root string, skipUnreadable bool, visit func(dir string) error) error {
	return filepath.WalkDir(root, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			if skipUnreadable {
				return nil
			}
			return err
		}
		if !e.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		if strings.Count(rel, string(filepath.Separator)) > 4 {
			return filepath.SkipDir
		}
		switch e.Name() {
		case volumesDirName:
			if err := visit(filepath.Dir(path)); err != nil {
				return err
			}
			return filepath.SkipDir
		case snapshotsDirName, imagesDirName:
			return filepath.SkipDir
		}
		return nil
	})
}

// paginate returns the entries after token (an entry ID: robust against entries deleted between pages).
func paginate[T any](items []T, idOf func(T) string, token string, max int32) ([]T, string, error) {
	sort.Slice(items, func(i, j int) bool { return idOf(items[i]) < idOf(items[j]) })
	start := 0
	if token != "" {
		if _, _, err := decodeID(volumeIDPrefix, token); err != nil {
			if _, _, err := decodeID(snapshotIDPrefix, token); err != nil {
				return nil, "", status.Errorf(codes.Aborted, "invalid starting token %q", token)
			}
		}
		start = sort.Search(len(items), func(i int) bool { return idOf(items[i]) > token })
	}
	items = items[start:]
	if max > 0 && int(max) < len(items) {
		return items[:max], idOf(items[max-1]), nil
	}
	return items, "", nil
}

// ListVolumes implements csi.ControllerServer.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Error(codes.InvalidArgument, "max entries must not be negative")
	}
	stores, err := d.stores(ctx)
	if err != nil {
		return nil, err
	}
	var recs []*volumeRecord
	for _, s := range stores {
		keys, err := listKeys(s.volumesDir())
		if err != nil {
			return nil, internal(err)
		}
		for _, k := range keys {
			if rec, err := s.loadVolume(k); err == nil && rec != nil {
				recs = append(recs, rec)
			}
		}
	}
	page, next, err := paginate(recs, func(r *volumeRecord) string { return r.ID }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, rec := range page {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: volumeResponse(rec, nil)})
	}
	return resp, nil
}

// ListSnapshots implements csi.ControllerServer.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Error(codes.InvalidArgument, "max entries must not be negative")
	}
	var recs []*snapshotRecord
	if id := req.GetSnapshotId(); id != "" {
		loc, key, err := decodeID(snapshotIDPrefix, id)
		if err != nil {
			return &csi.ListSnapshotsResponse{}, nil
		}
		s, err := d.engine.store(ctx, loc)
		if err != nil {
			return nil, err
		}
		rec, err := s.loadSnapshot(key)
		if err != nil {
			return nil, internal(err)
		}
		if rec != nil {
			recs = append(recs, rec)
		}
	} else {
		stores, err := d.stores(ctx)
		if err != nil {
			return nil, err
		}
		for _, s := range stores {
			keys, err := listKeys(s.snapshotsDir())
			if err != nil {
				return nil, internal(err)
			}
			for _, k := range keys {
				if rec, err := s.loadSnapshot(k); err == nil && rec != nil {
					recs = append(recs, rec)
				}
			}
		}
	}
	if src := req.GetSourceVolumeId(); src != "" {
		var filtered []*snapshotRecord
		for _, r := range recs {
			if r.SourceVolumeID == src {
				filtered = append(filtered, r)
			}
		}
		recs = filtered
	}
	page, next, err := paginate(recs, func(r *snapshotRecord) string { return r.ID }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, rec := range page {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotResponse(rec)})
	}
	return resp, nil
}

// GetCapacity implements csi.ControllerServer: the free space of the backing filesystem. Volumes are thin,
// so this bounds the data that can still be written, not the sum of volume sizes.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if len(req.GetVolumeCapabilities()) > 0 {
		if _, err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	loc, err := parseParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	root, err := d.cfg.Locator.Root(ctx, loc.Claim)
	if err != nil {
		return nil, backingError(err, "backing volume")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return nil, internal(err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: int64(st.Bavail) * int64(st.Bsize)}, nil
}

// GetSnapshot implements csi.ControllerServer.
func (d *Driver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is required")
	}
	loc, key, err := decodeID(snapshotIDPrefix, id)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %s not found", id)
	}
	s, err := d.engine.store(ctx, loc)
	if err != nil {
		return nil, err
	}
	rec, err := s.loadSnapshot(key)
	if err != nil {
		return nil, internal(err)
	}
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %s not found", id)
	}
	return &csi.GetSnapshotResponse{Snapshot: snapshotResponse(rec)}, nil
}

// lockStore takes the per-request locks of ids, then the metadata lock of the store at loc, in that
// order; the returned function releases both.
func (d *Driver) lockStore(ctx context.Context, loc location, ids ...string) (*store, func(), error) {
	unlockIDs, err := d.locks.tryLock(ids...)
	if err != nil {
		return nil, nil, err
	}
	s, err := d.engine.store(ctx, loc)
	if err != nil {
		unlockIDs()
		return nil, nil, err
	}
	release, err := s.lock(ctx)
	if err != nil {
		unlockIDs()
		return nil, nil, internal(err)
	}
	return s, func() { release(); unlockIDs() }, nil
}
