package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/pvpool/pvpool/pkg/volume"
)

// fioTest is one fio job shape of issue #6 item 5.
type fioTest struct {
	name    string
	rw      string
	bs      string
	iodepth int
}

// The sequential write goes first on every target so the reads after it find written data (a qcow2
// image answers reads of unwritten clusters without touching the disk).
var fioTests = []fioTest{
	{"seqwrite-1M-qd8", "write", "1M", 8},
	{"seqread-1M-qd8", "read", "1M", 8},
	{"randwrite-4k-qd32", "randwrite", "4k", 32},
	{"randread-4k-qd32", "randread", "4k", 32},
}

type fioRun struct {
	iops, mibps, latUs float64
}

func runFio(ctx context.Context, path string, t fioTest, size int64, runtime time.Duration, timeBased bool) (fioRun, error) {
	args := []string{"--name=" + t.name, "--filename=" + path, "--rw=" + t.rw, "--bs=" + t.bs,
		"--iodepth=" + strconv.Itoa(t.iodepth), "--direct=1", "--ioengine=libaio", "--size=" + strconv.FormatInt(size, 10),
		"--output-format=json"}
	if timeBased {
		args = append(args, "--time_based", "--ramp_time=1", fmt.Sprintf("--runtime=%.0f", runtime.Seconds()))
	}
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return fioRun{}, fmt.Errorf("fio %s on %s: %v: %s", t.name, path, err, stderr)
	}
	var res struct {
		Jobs []struct {
			Read, Write struct {
				IOPS  float64 `json:"iops"`
				BW    float64 `json:"bw"` // KiB/s
				LatNs struct {
					Mean float64 `json:"mean"`
				} `json:"lat_ns"`
			}
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 {
		return fioRun{}, fmt.Errorf("fio %s: cannot parse its output (%v): %.200s", t.name, err, out)
	}
	side := res.Jobs[0].Read
	if t.rw == "write" || t.rw == "randwrite" {
		side = res.Jobs[0].Write
	}
	return fioRun{iops: side.IOPS, mibps: side.BW / 1024, latUs: side.LatNs.Mean / 1000}, nil
}

// prefill writes the whole span once (not timed) so that every test reads and overwrites allocated data.
func prefill(ctx context.Context, path string, size int64) error {
	_, err := runFio(ctx, path, fioTest{"prefill", "write", "1M", 8}, size, 0, false)
	return err
}

func stats(runs []fioRun) FioStats {
	var iops, mibps, lat []float64
	for _, r := range runs {
		iops, mibps, lat = append(iops, r.iops), append(mibps, r.mibps), append(lat, r.latUs)
	}
	return FioStats{IOPS: median(iops), MiBPerSecond: median(mibps), MeanLatencyUs: median(lat), SamplesIOPS: iops}
}

// attachModes lists the modes to measure and why others are left out.
func attachModes() ([]volume.AttachMode, map[string]string) {
	modes := []volume.AttachMode{volume.AttachNBDFuse}
	unavailable := map[string]string{}
	if _, err := os.Stat("/dev/nbd0"); err != nil {
		unavailable[string(volume.AttachKernelNBD)] = "no /dev/nbd* on this host (nbd module not loaded or not built)"
	} else if _, err := exec.LookPath("nbd-client"); err != nil {
		unavailable[string(volume.AttachKernelNBD)] = "nbd-client is not installed"
	} else {
		modes = append(modes, volume.AttachKernelNBD)
	}
	return modes, unavailable
}

func runIO(ctx context.Context, o options, dir string, rep *IOReport) error {
	rep.SizeBytes, rep.RuntimeSeconds, rep.Repetitions = o.fioSize, o.fioRuntime.Seconds(), o.fioReps
	if os.Geteuid() != 0 {
		rep.Skipped = "needs root (loop devices, FUSE)"
		return nil
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return fmt.Errorf("fio not found: run hack/install-node-deps.sh")
	}
	modes, unavailable := attachModes()
	rep.Unavailable = unavailable
	rep.Daemon = volume.DaemonSettings(o.fioSize)
	raw := filepath.Join(dir, "io", "raw.img")
	if err := os.MkdirAll(filepath.Dir(raw), 0o755); err != nil {
		return err
	}
	defer os.Remove(raw)
	progress("prefilling the raw file (%s)", formatBytes(o.fioSize))
	if err := prefill(ctx, raw, o.fioSize); err != nil {
		return err
	}
	for _, mode := range modes {
		rep.Attach = volume.AttachSettings(mode)
		if err := runIOMode(ctx, o, dir, raw, mode, rep); err != nil {
			return fmt.Errorf("attach mode %s: %w", mode, err)
		}
	}
	return nil
}

func runIOMode(ctx context.Context, o options, dir, raw string, mode volume.AttachMode, rep *IOReport) error {
	b, err := newBenchDriver(ctx, dir, "io-"+string(mode), filepath.Join(dir, "work-io"), true, mode, 0)
	if err != nil {
		return err
	}
	defer b.close()
	id, err := b.create(ctx, "fio", o.fioSize, nil)
	if err != nil {
		return err
	}
	dev, err := b.stage(ctx, id)
	if err != nil {
		return err
	}
	progress("prefilling the %s device (%s)", mode, formatBytes(o.fioSize))
	if err := prefill(ctx, dev, o.fioSize); err != nil {
		return err
	}
	for _, t := range fioTests {
		var rawRuns, devRuns []fioRun
		// Alternating sides spreads the machine's noise over both.
		for i := 0; i < o.fioReps; i++ {
			progress("fio %s %d/%d: raw, then %s", t.name, i+1, o.fioReps, mode)
			r, err := runFio(ctx, raw, t, o.fioSize, o.fioRuntime, true)
			if err != nil {
				return err
			}
			rawRuns = append(rawRuns, r)
			d, err := runFio(ctx, dev, t, o.fioSize, o.fioRuntime, true)
			if err != nil {
				return err
			}
			devRuns = append(devRuns, d)
		}
		res := IOResult{Test: t.name, Mode: string(mode), Raw: stats(rawRuns), Attach: stats(devRuns)}
		res.Ratio = ratio(res.Attach.IOPS, res.Raw.IOPS)
		rep.Results = append(rep.Results, res)
	}
	if err := b.unstage(ctx, id); err != nil {
		return err
	}
	return b.deleteVolume(ctx, id)
}
