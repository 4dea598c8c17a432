// Command storage measures pvpool-csi's storage path in process, without a cluster (issue #6, items 4
// and 5):
//
//   - the cost of CreateVolume, clone, snapshot, restore and expand against the volume's size (1 GiB
//     empty, 1 TiB empty, 10 GiB written) and its backing chain depth, offline (qemu-img on unstaged
//     volumes) and online (staged volumes: live snapshots through qemu-storage-daemon);
//   - fio through the attach path (qemu-storage-daemon, NBD, the block device of each attach mode this
//     host has) against a raw file on the same backing filesystem.
//
// It prints a table on stdout, progress on stderr, and writes the Report (report.go documents the
// schema) as JSON to -out. The online part and the I/O part need root (loop devices, FUSE).
//
//	go run ./test/bench/storage -out _output/bench/storage.json [-quick]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

type options struct {
	out         string
	quick       bool
	dir         string
	keep        bool
	parts       string
	reps        int
	writtenGiB  int
	chainDataMi int
	fioSize     int64
	fioRuntime  time.Duration
	fioReps     int
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "_output/bench/storage.json", "where to write the JSON report")
	flag.BoolVar(&o.quick, "quick", false, "fewer repetitions and less data (about two minutes instead of ten)")
	flag.StringVar(&o.dir, "dir", "", "backing directory to work in (default: a new directory under /var/tmp, removed afterwards); it must be on the filesystem to measure")
	flag.BoolVar(&o.keep, "keep", false, "keep the backing directory")
	flag.StringVar(&o.parts, "parts", "ops,io", "which parts to run: ops (operation cost), io (fio)")
	flag.IntVar(&o.reps, "reps", 0, "repetitions per operation (default 5, quick 3; at most 7 so the size runs stay under the chain bound)")
	flag.IntVar(&o.writtenGiB, "written-gib", 0, "GiB written into the \"written\" volume (default 10, quick 2)")
	flag.IntVar(&o.chainDataMi, "chain-data-mib", 0, "MiB written under each chain-depth volume (default 256, quick 64)")
	fioSizeMiB := flag.Int64("fio-size-mib", 0, "span of each fio job in MiB (default 2048, quick 512)")
	flag.DurationVar(&o.fioRuntime, "fio-runtime", 0, "duration of each fio run (default 10s, quick 3s)")
	flag.IntVar(&o.fioReps, "fio-reps", 0, "fio runs per test and side, alternating raw and attach (default 3, quick 1)")
	klog.InitFlags(nil)
	flag.Parse()
	// The driver's own logs would drown the progress lines; errors still show.
	_ = flag.Set("v", "0")
	_ = flag.Set("stderrthreshold", "ERROR")
	_ = flag.Set("logtostderr", "false")
	_ = flag.Set("alsologtostderr", "false")
	klog.SetOutput(discard{})

	pick := func(v *int, full, quick int) {
		if *v == 0 {
			*v = full
			if o.quick {
				*v = quick
			}
		}
	}
	pick(&o.reps, 5, 3)
	pick(&o.writtenGiB, 10, 2)
	pick(&o.chainDataMi, 256, 64)
	pick(&o.fioReps, 3, 1)
	if *fioSizeMiB == 0 {
		*fioSizeMiB = 2048
		if o.quick {
			*fioSizeMiB = 512
		}
	}
	o.fioSize = *fioSizeMiB << 20
	if o.fioRuntime == 0 {
		o.fioRuntime = 10 * time.Second
		if o.quick {
			o.fioRuntime = 3 * time.Second
		}
	}
	if o.reps > 7 {
		fatalf("-reps %d: at most 7, so the size runs never reach the chain bound", o.reps)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	report, err := run(ctx, o)
	if report != nil {
		printTable(os.Stdout, report)
		if werr := writeReport(o.out, report); werr != nil {
			err = errors.Join(err, werr)
		} else {
			progress("wrote %s", o.out)
		}
	}
	if err != nil {
		fatalf("%v", err)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func run(ctx context.Context, o options) (*Report, error) {
	for _, bin := range []string{"qemu-img", "qemu-io", "qemu-storage-daemon"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not found: run hack/install-node-deps.sh", bin)
		}
	}
	started := time.Now()
	dir := o.dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("/var/tmp", "pvpool-bench-"); err != nil {
			return nil, err
		}
		if !o.keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	dir, _ = filepath.Abs(dir)
	if err := checkSpace(dir, o); err != nil {
		return nil, err
	}
	r := &Report{Schema: reportSchema, StartedAt: started.UTC(), Quick: o.quick, Command: strings.Join(os.Args, " "),
		Host: hostInfo(dir)}
	parts := map[string]bool{}
	for _, p := range strings.Split(o.parts, ",") {
		parts[strings.TrimSpace(p)] = true
	}
	var errs []error
	if parts["ops"] {
		if err := runOps(ctx, o, dir, &r.Ops); err != nil {
			errs = append(errs, fmt.Errorf("operation cost: %w", err))
		}
	}
	if parts["io"] && ctx.Err() == nil {
		if err := runIO(ctx, o, dir, &r.IO); err != nil {
			errs = append(errs, fmt.Errorf("I/O: %w", err))
		}
	}
	r.Seconds = time.Since(started).Seconds()
	return r, errors.Join(errs...)
}

// checkSpace refuses to start when the backing filesystem cannot hold the written volume, the fio files
// and the chain-depth data with some margin: filling a shared disk would break more than this benchmark.
func checkSpace(dir string, o options) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	free := int64(st.Bavail) * st.Bsize
	need := int64(o.writtenGiB)<<30 + 2*o.fioSize + 4*int64(o.chainDataMi)<<20 + 2<<30
	if free < need {
		return fmt.Errorf("%s has %s free, the benchmark needs about %s", dir, formatBytes(free), formatBytes(need))
	}
	return nil
}

func hostInfo(dir string) Host {
	h := Host{CPUs: runtime.NumCPU(), BackingDir: dir}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		h.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	if out, err := exec.Command("qemu-storage-daemon", "--version").Output(); err == nil {
		h.QemuVersion = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	if out, err := exec.Command("fio", "--version").Output(); err == nil {
		h.FioVersion = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", "--target", dir).Output(); err == nil {
		h.BackingFSType = strings.TrimSpace(string(out))
	}
	return h
}

func writeReport(path string, r *Report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(raw, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func progress(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "%s storage-bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func fatalf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "storage-bench: "+format+"\n", args...)
	os.Exit(1)
}
