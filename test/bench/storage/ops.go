package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/status"

	pvcsi "github.com/pvpool/pvpool/pkg/csi"
	"github.com/pvpool/pvpool/pkg/volume"
)

const gib = int64(1) << 30

// chainDepths are the backing chain lengths the depth runs start from; those past the driver's bound
// cannot exist and are left out.
var chainDepths = []int{1, 4, 8, 16}

func runOps(ctx context.Context, o options, dir string, rep *OpsReport) error {
	rep.Repetitions = o.reps
	rep.MaxChainLength = pvcsi.DefaultMaxChainLength
	rep.WrittenBytes = int64(o.writtenGiB) * gib
	rep.ChainDataBytes = int64(o.chainDataMi) << 20
	work := filepath.Join(dir, "work")
	node := os.Geteuid() == 0
	if !node {
		rep.OnlineSkipped = "needs root (loop devices, FUSE)"
	}
	// The size runs take many snapshots of one volume; an unbounded chain keeps them from ever reaching
	// the flatten the depth runs measure on purpose, so only size shows in these figures.
	b, err := newBenchDriver(ctx, dir, "", work, node, volume.AttachAuto, 1<<20)
	if err != nil {
		return err
	}
	defer b.close()
	if err := runSizeCases(ctx, o, b, rep); err != nil {
		return err
	}
	db, err := newBenchDriver(ctx, dir, "depth", work, false, "", 0)
	if err != nil {
		return err
	}
	defer db.close()
	return runDepthCases(ctx, o, db, rep)
}

type sizeCase struct {
	name    string
	size    int64
	written int64
}

// timer collects the samples of one op in one situation.
type timer struct{ samples map[string][]float64 }

func (t *timer) time(key string, f func() error) error {
	start := time.Now()
	err := f()
	if err == nil {
		t.samples[key] = append(t.samples[key], time.Since(start).Seconds())
	}
	return err
}

func runSizeCases(ctx context.Context, o options, b *benchDriver, rep *OpsReport) error {
	cases := []sizeCase{
		{name: "1GiB-empty", size: gib},
		{name: "1TiB-empty", size: 1 << 40},
		{name: fmt.Sprintf("%dGiB-written", o.writtenGiB), size: int64(o.writtenGiB) * gib, written: int64(o.writtenGiB) * gib},
	}
	offlineOps := []string{"create", "delete", "snapshot", "clone", "restore", "expand"}
	onlineOps := []string{"snapshot", "clone", "expand"}
	var results []OpResult
	for _, c := range cases {
		if err := ctx.Err(); err != nil {
			return err
		}
		// A store per case, so the later cases do not pay for the images the earlier ones left (delete
		// garbage-collects the whole store).
		b.basePath = "size-" + c.name
		srcName := "src-" + c.name
		src, err := b.create(ctx, srcName, c.size, nil)
		if err != nil {
			return err
		}
		if c.written > 0 {
			progress("writing %s into %s", formatBytes(c.written), srcName)
			start := time.Now()
			if err := b.writeData(ctx, srcName, c.written); err != nil {
				return err
			}
			progress("wrote %s in %.1fs", formatBytes(c.written), time.Since(start).Seconds())
		}
		progress("offline ops on %s (%d repetitions)", c.name, o.reps)
		t := &timer{samples: map[string][]float64{}}
		size := c.size
		for i := 0; i < o.reps; i++ {
			size += gib
			if err := t.time("expand", func() error { return b.expand(ctx, src, size) }); err != nil {
				return fmt.Errorf("expand %s: %w", c.name, err)
			}
			var snap string
			if err := t.time("snapshot", func() (err error) {
				snap, err = b.snapshot(ctx, fmt.Sprintf("snap-%s-%d", c.name, i), src)
				return err
			}); err != nil {
				return err
			}
			if err := t.time("clone", func() error {
				_, err := b.create(ctx, fmt.Sprintf("clone-%s-%d", c.name, i), 0, fromVolume(src))
				return err
			}); err != nil {
				return err
			}
			if err := t.time("restore", func() error {
				_, err := b.create(ctx, fmt.Sprintf("restore-%s-%d", c.name, i), 0, fromSnapshot(snap))
				return err
			}); err != nil {
				return err
			}
			var fresh string
			if err := t.time("create", func() (err error) {
				fresh, err = b.create(ctx, fmt.Sprintf("new-%s-%d", c.name, i), c.size, nil)
				return err
			}); err != nil {
				return err
			}
			if err := t.time("delete", func() error { return b.deleteVolume(ctx, fresh) }); err != nil {
				return err
			}
		}
		for _, op := range offlineOps {
			results = append(results, OpResult{Op: op, Mode: "offline", Case: c.name, SizeBytes: c.size,
				Samples: t.samples[op], MedianSeconds: median(t.samples[op])})
		}
		if !b.node {
			continue
		}
		progress("online ops on %s (staged; %d repetitions)", c.name, o.reps)
		if _, err := b.stage(ctx, src); err != nil {
			return fmt.Errorf("stage %s: %w", c.name, err)
		}
		t = &timer{samples: map[string][]float64{}}
		for i := 0; i < o.reps; i++ {
			if err := t.time("snapshot", func() error {
				_, err := b.snapshot(ctx, fmt.Sprintf("osnap-%s-%d", c.name, i), src)
				return err
			}); err != nil {
				return err
			}
			if err := t.time("clone", func() error {
				_, err := b.create(ctx, fmt.Sprintf("oclone-%s-%d", c.name, i), 0, fromVolume(src))
				return err
			}); err != nil {
				return err
			}
		}
		// Expansion is offline only: the driver refuses it while the volume is staged.
		expandErr := b.expand(ctx, src, size+gib)
		if err := b.unstage(ctx, src); err != nil {
			return err
		}
		for _, op := range onlineOps {
			res := OpResult{Op: op, Mode: "online", Case: c.name, SizeBytes: c.size, Samples: t.samples[op], MedianSeconds: median(t.samples[op])}
			if op == "expand" {
				if expandErr == nil {
					return errors.New("online expand unexpectedly succeeded: update the benchmark to time it")
				}
				res.Unsupported = status.Convert(expandErr).Message()
			}
			results = append(results, res)
		}
	}
	base := map[opKey]float64{}
	for _, r := range results {
		if r.Case == cases[0].name {
			base[opKey{r.Op, r.Mode}] = r.MedianSeconds
		}
	}
	for i := range results {
		if results[i].Unsupported == "" {
			results[i].Ratio = ratio(results[i].MedianSeconds, base[opKey{results[i].Op, results[i].Mode}])
		}
	}
	rep.BySize = results
	return nil
}

// depthVolume builds a 1 GiB volume holding chainData bytes in its base image, with a head chain of
// depth images (depth-1 snapshots on top), and returns it with the snapshot IDs taken.
func depthVolume(ctx context.Context, b *benchDriver, name string, depth int, chainData int64) (string, []string, error) {
	id, err := b.create(ctx, name, gib, nil)
	if err != nil {
		return "", nil, err
	}
	if err := b.writeData(ctx, name, chainData); err != nil {
		return "", nil, err
	}
	var snaps []string
	for k := 1; k < depth; k++ {
		s, err := b.snapshot(ctx, fmt.Sprintf("%s-layer%d", name, k), id)
		if err != nil {
			return "", nil, err
		}
		snaps = append(snaps, s)
	}
	if n, err := b.chainLength(name); err != nil || n != depth {
		return "", nil, fmt.Errorf("volume %s has a chain of %d images, want %d (%v)", name, n, depth, err)
	}
	return id, snaps, nil
}

func runDepthCases(ctx context.Context, o options, b *benchDriver, rep *OpsReport) error {
	chainData := int64(o.chainDataMi) << 20
	type sample struct {
		seconds    []float64
		chainAfter int
		flattened  bool
	}
	var results []OpResult
	for _, depth := range chainDepths {
		if depth > rep.MaxChainLength {
			continue
		}
		progress("offline ops at chain depth %d (%d repetitions)", depth, o.reps)
		samples := map[string]*sample{}
		record := func(op string, seconds float64, chainAfter int) {
			s := samples[op]
			if s == nil {
				s = &sample{}
				samples[op] = s
			}
			s.seconds = append(s.seconds, seconds)
			s.chainAfter = chainAfter
			// An image the op produced (or the source it left) with a chain of one was written flat;
			// below the bound every op stacks an overlay instead.
			s.flattened = chainAfter == 1 && op != "expand"
		}
		for i := 0; i < o.reps; i++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			var volumes, snapshots []string
			// Expand, snapshot and restore share a volume: expand keeps the chain, the snapshot is the one
			// restored (its image sits at the depth measured).
			nameA := fmt.Sprintf("a-d%d-%d", depth, i)
			a, snaps, err := depthVolume(ctx, b, nameA, depth, chainData)
			if err != nil {
				return err
			}
			volumes, snapshots = append(volumes, a), append(snapshots, snaps...)
			start := time.Now()
			if err := b.expand(ctx, a, 2*gib); err != nil {
				return err
			}
			seconds := time.Since(start).Seconds()
			n, err := b.chainLength(nameA)
			if err != nil {
				return err
			}
			record("expand", seconds, n)
			start = time.Now()
			snap, err := b.snapshot(ctx, nameA+"-snap", a)
			if err != nil {
				return err
			}
			seconds = time.Since(start).Seconds()
			snapshots = append(snapshots, snap)
			if n, err = b.chainLength(nameA); err != nil {
				return err
			}
			record("snapshot", seconds, n)
			start = time.Now()
			restored, err := b.create(ctx, nameA+"-restore", 0, fromSnapshot(snap))
			if err != nil {
				return err
			}
			seconds = time.Since(start).Seconds()
			volumes = append(volumes, restored)
			if n, err = b.chainLength(nameA + "-restore"); err != nil {
				return err
			}
			record("restore", seconds, n)
			// Clone freezes its source as a snapshot does, so it gets a volume of its own at the same depth.
			nameB := fmt.Sprintf("b-d%d-%d", depth, i)
			bv, snaps, err := depthVolume(ctx, b, nameB, depth, chainData)
			if err != nil {
				return err
			}
			volumes, snapshots = append(volumes, bv), append(snapshots, snaps...)
			start = time.Now()
			clone, err := b.create(ctx, nameB+"-clone", 0, fromVolume(bv))
			if err != nil {
				return err
			}
			seconds = time.Since(start).Seconds()
			volumes = append(volumes, clone)
			if n, err = b.chainLength(nameB + "-clone"); err != nil {
				return err
			}
			record("clone", seconds, n)
			// Everything goes, so the disk holds one repetition's data at a time.
			for _, id := range volumes {
				if err := b.deleteVolume(ctx, id); err != nil {
					return err
				}
			}
			for _, id := range snapshots {
				if err := b.deleteSnapshot(ctx, id); err != nil {
					return err
				}
			}
		}
		for _, op := range []string{"snapshot", "clone", "restore", "expand"} {
			s := samples[op]
			results = append(results, OpResult{Op: op, Mode: "offline", Case: fmt.Sprintf("depth-%d", depth), SizeBytes: gib,
				Depth: depth, Samples: s.seconds, MedianSeconds: median(s.seconds), ChainAfter: s.chainAfter, Flattened: s.flattened})
		}
	}
	base := map[string]float64{}
	for _, r := range results {
		if r.Depth == 1 {
			base[r.Op] = r.MedianSeconds
		}
	}
	for i := range results {
		results[i].Ratio = ratio(results[i].MedianSeconds, base[results[i].Op])
	}
	rep.ByDepth = results
	return nil
}
