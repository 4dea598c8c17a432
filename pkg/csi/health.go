package csi

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pvpool/pvpool/pkg/volume"
)

// volumeHealth checks what the controller can see: the volume's image chain is complete on the backing
// filesystem.
func volumeHealth(s *store, rec *volumeRecord) *csi.VolumeHealth {
	health := &csi.VolumeHealth{VolumeId: rec.ID}
	if _, err := volume.Chain(s.imagePath(rec.Head), volume.BackingOf); err != nil {
		health.HealthStatuses = append(health.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_DATA_LOSS, Reason: "BrokenImageChain", Message: err.Error()})
	}
	return health
}

// ControllerGetVolumeHealth implements csi.ControllerServer.
func (d *Driver) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	s, rec, err := d.lookupVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: volumeHealth(s, rec)}, nil
}

// ControllerListVolumeHealth implements csi.ControllerServer.
func (d *Driver) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Error(codes.InvalidArgument, "max entries must not be negative")
	}
	stores, err := d.stores(ctx)
	if err != nil {
		return nil, err
	}
	type entry struct {
		s   *store
		rec *volumeRecord
	}
	var all []entry
	for _, s := range stores {
		keys, err := listKeys(s.volumesDir())
		if err != nil {
			return nil, internal(err)
		}
		for _, k := range keys {
			if rec, err := s.loadVolume(k); err == nil && rec != nil {
				all = append(all, entry{s, rec})
			}
		}
	}
	page, next, err := paginate(all, func(e entry) string { return e.rec.ID }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, e := range page {
		resp.Entries = append(resp.Entries, volumeHealth(e.s, e.rec))
	}
	return resp, nil
}
