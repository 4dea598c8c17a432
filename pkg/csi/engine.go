package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/volume"
)

// DefaultMaxChainLength bounds backing chains. Overlays make snapshot, clone and restore constant-time,
// but every image in a chain costs an open file and a lookup on reads. When a new image would sit deeper
// than this, it is written flat instead (qemu-img convert, time proportional to allocated data), and a
// volume whose own chain grew past it is flattened when it is not in use.
const DefaultMaxChainLength = 16

// LiveFreezer freezes the head image of a volume that a node serves: the node's daemon switches to
// the image named newHeadName in the store (an overlay of the current head) without interrupting I/O.
type LiveFreezer interface {
	Freeze(ctx context.Context, stage stageRecord, volumeID, newHeadName string) error
}

// engine holds the image operations shared by the controller and node services.
type engine struct {
	locator        BackingLocator
	live           LiveFreezer
	maxChainLength int
}

func (e *engine) store(ctx context.Context, loc location) (*store, error) {
	root, err := e.locator.Root(ctx, loc.Claim)
	if err != nil {
		return nil, backingError(err, fmt.Sprintf("backing volume %s/%s", loc.Claim.Namespace, loc.Claim.Name))
	}
	return &store{loc: loc, dir: filepath.Join(root, loc.BasePath)}, nil
}

// backingError keeps the code a locator chose (FailedPrecondition for a claim that cannot serve,
// Unavailable while its holder starts); any other failure to reach a backing volume may pass, so it is
// Unavailable, which the sidecars retry.
func backingError(err error, what string) error {
	if s, ok := status.FromError(err); ok {
		return status.Errorf(s.Code(), "%s: %s", what, s.Message())
	}
	return status.Errorf(codes.Unavailable, "%s: %v", what, err)
}

func newImageName() string { return uuid.NewString() + ".qcow2" }

func reachable(roots []string) (map[string]bool, error) {
	return volume.Reachable(roots, volume.BackingOf)
}

func chainLength(path string) (int, error) {
	chain, err := volume.Chain(path, volume.BackingOf)
	return len(chain), err
}

// freeze makes the volume's current head immutable and gives the volume a new head on top of it, live
// through the serving node's daemon when the volume is staged. It returns the frozen image. Call with the
// store lock held.
func (e *engine) freeze(ctx context.Context, s *store, volumeID, key string, rec *volumeRecord) (string, error) {
	// An interrupted freeze is finished first but not reused: its daemon may have taken writes since, which
	// this freeze must capture.
	if _, err := e.finishFreeze(ctx, s, volumeID, key, rec); err != nil {
		return "", err
	}
	rec.Pending = &pendingFreeze{NewHead: newImageName()}
	// The intent is durable before any image changes, so a crash at any later point is finished by the
	// next caller instead of leaving a daemon writing to an image the metadata does not name.
	if err := s.saveVolume(key, rec); err != nil {
		return "", err
	}
	return e.finishFreeze(ctx, s, volumeID, key, rec)
}

// finishFreeze completes a pending freeze. Every step is idempotent.
func (e *engine) finishFreeze(ctx context.Context, s *store, volumeID, key string, rec *volumeRecord) (string, error) {
	if rec.Pending == nil {
		return "", nil
	}
	newHead := s.imagePath(rec.Pending.NewHead)
	if _, err := os.Stat(newHead); errors.Is(err, os.ErrNotExist) {
		if err := volume.CreateOverlay(ctx, newHead, rec.Head, rec.Size); err != nil {
			return "", status.Errorf(codes.Internal, "create overlay for volume %s: %v", volumeID, err)
		}
	} else if err != nil {
		return "", status.Error(codes.Internal, err.Error())
	}
	stages, err := s.stages(key)
	if err != nil {
		return "", status.Error(codes.Internal, err.Error())
	}
	for _, st := range stages {
		if st.ReadOnly {
			continue
		}
		if e.live == nil {
			return "", status.Errorf(codes.Unavailable, "volume %s is in use on node %s and live snapshots are not available", volumeID, st.NodeID)
		}
		if err := e.live.Freeze(ctx, st, volumeID, rec.Pending.NewHead); err != nil {
			return "", status.Errorf(codes.Unavailable, "live snapshot of volume %s on node %s: %v", volumeID, st.NodeID, err)
		}
	}
	frozen := rec.Head
	rec.Head = rec.Pending.NewHead
	rec.Pending = nil
	if err := s.saveVolume(key, rec); err != nil {
		return "", status.Error(codes.Internal, err.Error())
	}
	klog.FromContext(ctx).V(2).Info("Froze volume head", "volumeID", volumeID, "frozen", frozen, "head", rec.Head)
	return frozen, nil
}

// newImageOn creates a new writable image whose content is base's (zeroes past its end): an overlay, or a
// flat copy when an overlay would make the chain longer than the bound.
func (e *engine) newImageOn(ctx context.Context, s *store, base string, size int64) (string, error) {
	name := newImageName()
	basePath := s.imagePath(base)
	n, err := chainLength(basePath)
	if err != nil {
		return "", status.Errorf(codes.Internal, "read backing chain of %s: %v", base, err)
	}
	if n+1 > e.maxChainLength {
		if err := volume.Flatten(ctx, basePath, s.imagePath(name), size); err != nil {
			return "", status.Errorf(codes.Internal, "flatten %s: %v", base, err)
		}
		return name, nil
	}
	if err := volume.CreateOverlay(ctx, s.imagePath(name), base, size); err != nil {
		return "", status.Errorf(codes.Internal, "create overlay on %s: %v", base, err)
	}
	return name, nil
}

// boundChain flattens an unstaged volume's head when its chain grew past the bound.
func (e *engine) boundChain(ctx context.Context, s *store, key string, rec *volumeRecord) error {
	n, err := chainLength(s.imagePath(rec.Head))
	if err != nil {
		return status.Errorf(codes.Internal, "read backing chain of %s: %v", rec.Head, err)
	}
	if n <= e.maxChainLength {
		return nil
	}
	if stages, err := s.stages(key); err != nil || len(stages) > 0 {
		return err // flattened on a later offline operation
	}
	flat := newImageName()
	if err := volume.Flatten(ctx, s.imagePath(rec.Head), s.imagePath(flat), rec.Size); err != nil {
		return status.Errorf(codes.Internal, "flatten %s: %v", rec.Head, err)
	}
	rec.Head = flat
	return s.saveVolume(key, rec)
}

func (e *engine) gc(ctx context.Context, s *store) {
	removed, err := s.collectGarbage(ctx)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Garbage collection of images failed", "dir", s.dir)
		return
	}
	if len(removed) > 0 {
		klog.FromContext(ctx).V(2).Info("Removed unreferenced images", "dir", s.dir, "images", removed)
	}
}

func volumeNotFound(id string) error {
	return status.Errorf(codes.NotFound, "volume %s not found", id)
}

func internal(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, fmt.Sprint(err))
}
