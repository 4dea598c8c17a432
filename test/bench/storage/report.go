package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// reportSchema names the layout of the JSON report; bump it when a field changes meaning.
const reportSchema = "pvpool.storage-bench/v1"

// Report is the JSON document the benchmark writes (-out). Times are seconds, sizes bytes; every ratio is
// taken between figures measured in the same run, because absolute figures on a shared machine are noisy.
type Report struct {
	Schema    string    `json:"schema"`
	StartedAt time.Time `json:"startedAt"`
	// Seconds is the wall time of the whole run.
	Seconds float64 `json:"seconds"`
	Command string  `json:"command"`
	Quick   bool    `json:"quick"`
	Host    Host    `json:"host"`
	// Ops is item 4 of issue #6: the cost of CSI operations against volume size and chain depth.
	Ops OpsReport `json:"ops"`
	// IO is item 5: fio through the attach path against a raw file on the backing filesystem.
	IO IOReport `json:"io"`
}

// Host describes where the figures were taken.
type Host struct {
	Kernel        string `json:"kernel"`
	CPUs          int    `json:"cpus"`
	QemuVersion   string `json:"qemuVersion"`
	FioVersion    string `json:"fioVersion,omitempty"`
	BackingDir    string `json:"backingDir"`
	BackingFSType string `json:"backingFSType"`
}

// OpsReport holds the operation timings.
type OpsReport struct {
	// Repetitions per measurement; each figure is the median of its samples.
	Repetitions int `json:"repetitions"`
	// MaxChainLength is the driver's bound on backing chains (images past it are written flat).
	MaxChainLength int `json:"maxChainLength"`
	// WrittenBytes is how much data the "written" size case holds.
	WrittenBytes int64 `json:"writtenBytes"`
	// ChainDataBytes is how much data the base image of every chain-depth volume holds (what a flatten
	// copies).
	ChainDataBytes int64      `json:"chainDataBytes"`
	BySize         []OpResult `json:"bySize"`
	ByDepth        []OpResult `json:"byDepth"`
	// OnlineSkipped says why no online (staged volume) figures were taken, when none were.
	OnlineSkipped string `json:"onlineSkipped,omitempty"`
}

// OpResult is one operation measured in one situation.
type OpResult struct {
	// Op is create, delete, snapshot, clone, restore (create from snapshot) or expand.
	Op string `json:"op"`
	// Mode is "offline" (volume not staged: qemu-img) or "online" (staged, served by its daemon).
	Mode string `json:"mode"`
	// Case names the volume: "1GiB-empty", "1TiB-empty", "10GiB-written" (bySize), or "depth-N" (byDepth).
	Case string `json:"case"`
	// SizeBytes is the volume's virtual size; Depth the length of its head's backing chain before the op.
	SizeBytes int64 `json:"sizeBytes"`
	Depth     int   `json:"depth,omitempty"`
	// Samples are the individual timings; MedianSeconds their median.
	Samples       []float64 `json:"samples,omitempty"`
	MedianSeconds float64   `json:"medianSeconds"`
	// Ratio is MedianSeconds over the same op and mode in the baseline case (1GiB-empty, or depth-1):
	// about 1 means the cost does not grow with size or depth. 0 when there is no baseline.
	Ratio float64 `json:"ratio"`
	// ChainAfter is the backing chain length of the image the op produced or left (chain-depth runs);
	// Flattened is set when the driver wrote an image flat because the chain reached its bound.
	ChainAfter int  `json:"chainAfter,omitempty"`
	Flattened  bool `json:"flattened,omitempty"`
	// Unsupported carries the driver's answer when the op is refused in this mode (e.g. online expand).
	Unsupported string `json:"unsupported,omitempty"`
}

// IOReport holds the fio figures.
type IOReport struct {
	// SizeBytes is the span each fio job covers (raw file size and volume size).
	SizeBytes      int64   `json:"sizeBytes"`
	RuntimeSeconds float64 `json:"runtimeSeconds"`
	Repetitions    int     `json:"repetitions"`
	// Daemon and Attach are the qemu-storage-daemon and attach settings in effect (pkg/volume).
	Daemon  map[string]string `json:"daemon,omitempty"`
	Attach  map[string]string `json:"attach,omitempty"`
	Results []IOResult        `json:"results"`
	// Unavailable lists attach modes not measured, with the reason.
	Unavailable map[string]string `json:"unavailable,omitempty"`
	Skipped     string            `json:"skipped,omitempty"`
}

// IOResult is one fio job on the raw file and on one attach mode's block device, medians of the
// repetitions.
type IOResult struct {
	Test string `json:"test"` // e.g. randread-4k-qd32
	// Mode is the attach mode of the device side.
	Mode   string   `json:"mode"`
	Raw    FioStats `json:"raw"`
	Attach FioStats `json:"attach"`
	// Ratio is attach IOPS over raw IOPS (1 = no overhead).
	Ratio float64 `json:"ratio"`
}

// FioStats are one side's medians.
type FioStats struct {
	IOPS          float64 `json:"iops"`
	MiBPerSecond  float64 `json:"mibPerSecond"`
	MeanLatencyUs float64 `json:"meanLatencyUs"`
	// SamplesIOPS are the individual runs.
	SamplesIOPS []float64 `json:"samplesIOPS,omitempty"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func formatDuration(seconds float64) string {
	switch {
	case seconds == 0:
		return "-"
	case seconds < 1e-3:
		return fmt.Sprintf("%.0fµs", seconds*1e6)
	case seconds < 1:
		return fmt.Sprintf("%.1fms", seconds*1e3)
	default:
		return fmt.Sprintf("%.2fs", seconds)
	}
}

func formatRatio(r float64) string {
	if r == 0 || math.IsNaN(r) {
		return "-"
	}
	return fmt.Sprintf("%.2f", r)
}

// printTable writes the human-readable summary.
func printTable(w io.Writer, r *Report) {
	fmt.Fprintf(w, "pvpool storage benchmark (%s; %d CPUs, kernel %s, %s; backing %s on %s)\n", map[bool]string{true: "quick", false: "full"}[r.Quick],
		r.Host.CPUs, r.Host.Kernel, r.Host.QemuVersion, r.Host.BackingDir, r.Host.BackingFSType)
	fmt.Fprintf(w, "command: %s\n\n", r.Command)

	if len(r.Ops.BySize) > 0 {
		fmt.Fprintf(w, "CSI operation cost vs size (median of %d; ratio to the 1GiB-empty case, same op and mode)\n", r.Ops.Repetitions)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		cases := orderedCases(r.Ops.BySize)
		fmt.Fprintf(tw, "op\tmode\t%s\n", strings.Join(cases, "\t"))
		for _, key := range orderedOps(r.Ops.BySize) {
			var cells []string
			for _, c := range cases {
				cells = append(cells, cell(find(r.Ops.BySize, key.op, key.mode, c)))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", key.op, key.mode, strings.Join(cells, "\t"))
		}
		tw.Flush()
		if r.Ops.OnlineSkipped != "" {
			fmt.Fprintf(w, "online: skipped (%s)\n", r.Ops.OnlineSkipped)
		}
		fmt.Fprintln(w)
	}
	if len(r.Ops.ByDepth) > 0 {
		fmt.Fprintf(w, "CSI operation cost vs backing chain depth (offline, median of %d; max chain length %d; %s of data under each chain)\n",
			r.Ops.Repetitions, r.Ops.MaxChainLength, formatBytes(r.Ops.ChainDataBytes))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		cases := orderedCases(r.Ops.ByDepth)
		fmt.Fprintf(tw, "op\t%s\n", strings.Join(cases, "\t"))
		for _, key := range orderedOps(r.Ops.ByDepth) {
			var cells []string
			for _, c := range cases {
				res := find(r.Ops.ByDepth, key.op, key.mode, c)
				s := cell(res)
				if res != nil && res.ChainAfter > 0 {
					s += fmt.Sprintf(" →%d", res.ChainAfter)
					if res.Flattened {
						s += " flat"
					}
				}
				cells = append(cells, s)
			}
			fmt.Fprintf(tw, "%s\t%s\n", key.op, strings.Join(cells, "\t"))
		}
		tw.Flush()
		fmt.Fprintln(w, "(→N: chain length of the image the op produced; flat: written flat because the chain reached the bound)")
		fmt.Fprintln(w)
	}
	if r.IO.Skipped != "" {
		fmt.Fprintf(w, "I/O: skipped (%s)\n", r.IO.Skipped)
		return
	}
	if len(r.IO.Results) > 0 {
		fmt.Fprintf(w, "I/O through the attach path vs a raw file on the backing filesystem (fio, libaio, direct=1, %s span, %.0fs runs, median of %d)\n",
			formatBytes(r.IO.SizeBytes), r.IO.RuntimeSeconds, r.IO.Repetitions)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "test\tmode\traw IOPS\traw MiB/s\tattach IOPS\tattach MiB/s\tattach/raw")
		for _, res := range r.IO.Results {
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%s\n", res.Test, res.Mode, res.Raw.IOPS, res.Raw.MiBPerSecond,
				res.Attach.IOPS, res.Attach.MiBPerSecond, formatRatio(res.Ratio))
		}
		tw.Flush()
	}
	for mode, why := range r.IO.Unavailable {
		fmt.Fprintf(w, "attach mode %s: not measured (%s)\n", mode, why)
	}
	if len(r.IO.Daemon) > 0 {
		fmt.Fprintf(w, "qemu-storage-daemon settings: %s\n", formatSettings(r.IO.Daemon))
	}
	if len(r.IO.Attach) > 0 {
		fmt.Fprintf(w, "attach settings: %s\n", formatSettings(r.IO.Attach))
	}
}

func formatSettings(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, " ")
}

func cell(r *OpResult) string {
	switch {
	case r == nil:
		return "-"
	case r.Unsupported != "":
		return "n/a"
	case r.Ratio != 0:
		return fmt.Sprintf("%s (%s)", formatDuration(r.MedianSeconds), formatRatio(r.Ratio))
	default:
		return formatDuration(r.MedianSeconds)
	}
}

type opKey struct{ op, mode string }

func orderedOps(rs []OpResult) []opKey {
	var keys []opKey
	seen := map[opKey]bool{}
	for _, r := range rs {
		k := opKey{r.Op, r.Mode}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys
}

func orderedCases(rs []OpResult) []string {
	var cases []string
	seen := map[string]bool{}
	for _, r := range rs {
		if !seen[r.Case] {
			seen[r.Case] = true
			cases = append(cases, r.Case)
		}
	}
	return cases
}

func find(rs []OpResult, op, mode, c string) *OpResult {
	for i := range rs {
		if rs[i].Op == op && rs[i].Mode == mode && rs[i].Case == c {
			return &rs[i]
		}
	}
	return nil
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<40 && n%(1<<40) == 0:
		return fmt.Sprintf("%dTiB", n>>40)
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	default:
		return fmt.Sprintf("%dB", n)
	}
}
