// Command cluster benchmarks pvpool on a running cluster (hack/bench runs it on the local one):
//
//  1. checkout latency: Checkout create -> claim Bound and -> a pod using it Running, against dynamic
//     provisioning of the same claim through the same CSI driver, in alternating pairs, plus the
//     latency of the create call itself;
//  2. throughput: checkouts/s with 1, 8 and 32 concurrent clients against a pool holding a replica for
//     each, against raw PVC creates/s on kube-apiserver, asserting that no volume is handed out twice;
//  3. pool refill: N replicas available again after N checkouts, without and with an init job;
//  6. memory: VmRSS of pvpool-apiserver and the pvpool-csi processes idle and, sampled, during the
//     throughput run.
//
// It prints a table on stdout, progress on stderr, and writes -out (JSON: the Report type below is
// its schema, "schema": "pvpool.puppet.com/bench-cluster/v1") and PNG plots next to it. Everything it
// creates (namespaces labelled bench.pvpool.puppet.com/run, one StorageClass) is deleted on every
// exit, including SIGINT/SIGTERM. It exits 1 when a phase fails, including on a double handout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
)

const schema = "pvpool.puppet.com/bench-cluster/v1"

// Report is the JSON written to -out. Durations are in milliseconds (fields ending in Ms) or seconds
// (ending in Seconds); a phase not run is absent.
type Report struct {
	Schema     string            `json:"schema"`
	Started    time.Time         `json:"started"`
	Finished   time.Time         `json:"finished"`
	Host       Host              `json:"host"`
	Args       []string          `json:"args"`
	Latency    *LatencyReport    `json:"latency,omitempty"`
	Throughput *ThroughputReport `json:"throughput,omitempty"`
	Refill     *RefillReport     `json:"refill,omitempty"`
	Memory     []ProcessMemory   `json:"memory,omitempty"`
	Plots      []string          `json:"plots,omitempty"`
	// Error is why the run stopped early; the phases before it are reported.
	Error string `json:"error,omitempty"`
}

// Host says where the figures were taken.
type Host struct {
	Hostname string `json:"hostname"`
	CPUs     int    `json:"cpus"`
}

type config struct {
	kubeconfig          string
	out                 string
	plotDir             string
	phases              map[string]bool
	checkouts           int
	latencyPool         int
	throughputCheckouts int
	clients             []int
	refillReplicas      int
	refillRounds        int
	storageClass        string
	volumeMode          string
	size                string
	podImage            string
	cgroupRoot          string
	sampleTimeout       time.Duration
	deleteTimeout       time.Duration
	memoryInterval      time.Duration
	qps                 float64
	replot              string
}

// fillTimeout bounds waiting for n replicas to become available.
func (c config) fillTimeout(n int) time.Duration {
	return 2*time.Minute + time.Duration(n)*3*time.Second
}

var allPhases = []string{"latency", "throughput", "refill"}

func parseFlags(args []string) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	klog.InitFlags(fs)
	defaultKubeconfig := os.Getenv("KUBECONFIG")
	if defaultKubeconfig == "" {
		defaultKubeconfig = "_output/cluster/kubeconfig/admin.kubeconfig"
	}
	fs.StringVar(&cfg.kubeconfig, "kubeconfig", defaultKubeconfig, "kubeconfig of the cluster (admin)")
	fs.StringVar(&cfg.out, "out", "_output/bench/cluster.json", "JSON report")
	fs.StringVar(&cfg.plotDir, "plot-dir", "", "directory of the PNG plots (default: the directory of -out)")
	phases := fs.String("phases", strings.Join(allPhases, ","), "phases to run: latency, throughput, refill (memory is sampled idle at the start and during throughput)")
	fs.IntVar(&cfg.checkouts, "checkouts", 200, "latency: checkouts measured, and as many dynamically provisioned claims")
	fs.IntVar(&cfg.latencyPool, "latency-pool", 10, "latency: replicas of the pool checked out from")
	fs.IntVar(&cfg.throughputCheckouts, "throughput-checkouts", 100, "throughput: checkouts (and raw claims) per level, and the pool's replicas")
	clients := fs.String("clients", "1,8,32", "throughput: concurrent clients per level")
	fs.IntVar(&cfg.refillReplicas, "refill-replicas", 10, "refill: replicas of the pool (N)")
	fs.IntVar(&cfg.refillRounds, "refill-rounds", 3, "refill: rounds of N checkouts per kind of pool")
	fs.StringVar(&cfg.storageClass, "storage-class", "local-path", "StorageClass of pvpool-csi used by the pools and the dynamically provisioned claims")
	fs.StringVar(&cfg.volumeMode, "volume-mode", string(corev1.PersistentVolumeFilesystem), "Filesystem or Block")
	fs.StringVar(&cfg.size, "size", "64Mi", "size of every volume")
	fs.StringVar(&cfg.podImage, "pod-image", "busybox:stable-musl", "image of the pods and init jobs")
	fs.StringVar(&cfg.cgroupRoot, "cgroup-root", "/pvpool", "cgroup root of the cluster's pods; only processes in it are measured (empty: any)")
	fs.DurationVar(&cfg.sampleTimeout, "sample-timeout", 3*time.Minute, "longest wait for one claim Bound, pod Running or object gone")
	fs.DurationVar(&cfg.deleteTimeout, "delete-timeout", 5*time.Minute, "longest wait for a namespace to be deleted")
	fs.DurationVar(&cfg.memoryInterval, "memory-interval", 100*time.Millisecond, "RSS sampling interval during the throughput run")
	fs.Float64Var(&cfg.qps, "qps", 2000, "client-side rate limit (burst is twice that); high so the servers are measured, not the client")
	fs.StringVar(&cfg.replot, "replot", "", "read this JSON report, print its table and write its plots to -plot-dir; measure nothing")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cfg.plotDir == "" {
		cfg.plotDir = filepath.Dir(cfg.out)
	}
	cfg.phases = map[string]bool{}
	for _, phase := range strings.Split(*phases, ",") {
		phase = strings.TrimSpace(phase)
		if phase == "" {
			continue
		}
		known := false
		for _, p := range allPhases {
			known = known || p == phase
		}
		if !known {
			return cfg, fmt.Errorf("unknown phase %q (want some of %s)", phase, strings.Join(allPhases, ", "))
		}
		cfg.phases[phase] = true
	}
	for _, field := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || n < 1 {
			return cfg, fmt.Errorf("-clients: %q is not a positive number", field)
		}
		cfg.clients = append(cfg.clients, n)
	}
	if cfg.volumeMode != string(corev1.PersistentVolumeFilesystem) && cfg.volumeMode != string(corev1.PersistentVolumeBlock) {
		return cfg, fmt.Errorf("-volume-mode must be Filesystem or Block, not %q", cfg.volumeMode)
	}
	for name, n := range map[string]int{"-checkouts": cfg.checkouts, "-latency-pool": cfg.latencyPool, "-throughput-checkouts": cfg.throughputCheckouts, "-refill-replicas": cfg.refillReplicas, "-refill-rounds": cfg.refillRounds} {
		if n < 1 {
			return cfg, fmt.Errorf("%s must be at least 1", name)
		}
	}
	return cfg, nil
}

func progress(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "[bench %s] %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer klog.Flush()
	if cfg.replot != "" {
		return replot(cfg)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// A second signal kills the program outright, as without this handler.
		stop()
	}()

	restConfig, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		klog.ErrorS(err, "Loading the kubeconfig", "kubeconfig", cfg.kubeconfig)
		return 1
	}
	restConfig.QPS, restConfig.Burst = float32(cfg.qps), int(2*cfg.qps)
	restConfig.UserAgent = "pvpool-bench-cluster"
	b := &bench{cfg: cfg, runID: rand.String(6)}
	if b.kube, err = kubernetes.NewForConfig(restConfig); err != nil {
		klog.ErrorS(err, "Creating the Kubernetes client")
		return 1
	}
	if b.pvpool, err = clientset.NewForConfig(restConfig); err != nil {
		klog.ErrorS(err, "Creating the pvpool client")
		return 1
	}
	hostname, _ := os.Hostname()
	report := &Report{Schema: schema, Started: time.Now().UTC(), Host: Host{Hostname: hostname, CPUs: runtime.NumCPU()}, Args: args}

	runErr := b.runPhases(ctx, report)
	if err := b.cleanup(); err != nil {
		klog.ErrorS(err, "Cleaning up")
		runErr = errors.Join(runErr, err)
	}
	report.Finished = time.Now().UTC()
	if runErr != nil {
		report.Error = runErr.Error()
	}
	if err := os.MkdirAll(cfg.plotDir, 0o755); err != nil {
		klog.ErrorS(err, "Creating the plot directory")
		return 1
	}
	report.Plots = writePlots(cfg.plotDir, report)
	if err := writeJSON(cfg.out, report); err != nil {
		klog.ErrorS(err, "Writing the report")
		return 1
	}
	printTable(os.Stdout, report)
	progress("wrote %s and %d plots in %s", cfg.out, len(report.Plots), cfg.plotDir)
	if runErr != nil {
		klog.ErrorS(runErr, "Benchmark failed")
		return 1
	}
	return 0
}

// replot redraws the table and plots of a report written earlier.
func replot(cfg config) int {
	data, err := os.ReadFile(cfg.replot)
	if err != nil {
		klog.ErrorS(err, "Reading the report")
		return 1
	}
	report := &Report{}
	if err := json.Unmarshal(data, report); err != nil {
		klog.ErrorS(err, "Decoding the report", "path", cfg.replot)
		return 1
	}
	if err := os.MkdirAll(cfg.plotDir, 0o755); err != nil {
		klog.ErrorS(err, "Creating the plot directory")
		return 1
	}
	plots := writePlots(cfg.plotDir, report)
	printTable(os.Stdout, report)
	progress("wrote %d plots in %s", len(plots), cfg.plotDir)
	return 0
}

func (b *bench) runPhases(ctx context.Context, report *Report) (failed error) {
	if err := b.waitForAPI(ctx); err != nil {
		return err
	}
	memory := newMemoryMonitor(b.cfg.cgroupRoot)
	if err := memory.sampleIdle(); err != nil {
		// Without the processes the memory figures are missing, but the rest still measures.
		klog.ErrorS(err, "Sampling idle memory")
	}
	defer func() { report.Memory = memory.report() }()
	if b.cfg.phases["latency"] {
		progress("latency: %d checkouts vs %d dynamically provisioned claims, alternating", b.cfg.checkouts, b.cfg.checkouts)
		latency, err := b.runLatency(ctx, progress)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		report.Latency = latency
	}
	if b.cfg.phases["throughput"] {
		progress("throughput: %d checkouts and %d raw claims per level, clients %v", b.cfg.throughputCheckouts, b.cfg.throughputCheckouts, b.cfg.clients)
		throughput, err := b.runThroughput(ctx, memory, progress)
		report.Throughput = throughput
		if err != nil && throughput == nil {
			return fmt.Errorf("throughput: %w", err)
		}
		if err != nil {
			// Wrong handouts: the figures stand, the run fails at the end.
			defer func() { failed = errors.Join(failed, fmt.Errorf("throughput: %w", err)) }()
		}
	}
	if b.cfg.phases["refill"] {
		progress("refill: pools of %d, %d rounds, without and with an init job", b.cfg.refillReplicas, b.cfg.refillRounds)
		refill, err := b.runRefill(ctx, progress)
		if err != nil {
			return fmt.Errorf("refill: %w", err)
		}
		report.Refill = refill
	}
	return nil
}

func writePlots(dir string, report *Report) []string {
	var plots []string
	if report.Latency != nil {
		written, err := plotLatencyCDFs(dir, report.Latency)
		if err != nil {
			klog.ErrorS(err, "Plotting latency")
		}
		plots = append(plots, written...)
	}
	if report.Throughput != nil && len(report.Throughput.Levels) > 0 {
		written, err := plotThroughput(dir, report.Throughput)
		if err != nil {
			klog.ErrorS(err, "Plotting throughput")
		} else {
			plots = append(plots, written)
		}
	}
	return plots
}

func writeJSON(path string, report *Report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func formatMs(ms float64) string {
	switch {
	case ms >= 10000:
		return fmt.Sprintf("%.1fs", ms/1000)
	case ms >= 1000:
		return fmt.Sprintf("%.2fs", ms/1000)
	case ms >= 100:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.1fms", ms)
	}
}

// formatRatio keeps two significant digits below 10, where they matter.
func formatRatio(r float64) string {
	switch {
	case r >= 10:
		return fmt.Sprintf("%.0fx", r)
	case r >= 1:
		return fmt.Sprintf("%.1fx", r)
	default:
		return fmt.Sprintf("%.2fx", r)
	}
}

func printTable(out io.Writer, report *Report) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	defer w.Flush()
	if l := report.Latency; l != nil {
		fmt.Fprintf(w, "\n== 1. Checkout latency: %d checkouts vs %d dynamically provisioned claims, alternating (%s, %s, %s; pool of %d) ==\n",
			l.Checkout.Bound.N, l.Dynamic.Bound.N, l.StorageClass, l.VolumeMode, l.Size, l.PoolReplicas)
		fmt.Fprintln(w, "from create to\tkind\tp50\tp90\tp99\tmax\tdynamic/checkout p50\tp90\tp99")
		for _, row := range []struct {
			name              string
			checkout, dynamic Summary
			ratios            Ratios
		}{
			{"create call returned", l.Checkout.APICreate, l.Dynamic.APICreate, l.APICreateRatio},
			{"claim Bound", l.Checkout.Bound, l.Dynamic.Bound, l.BoundRatio},
			{"pod Running", l.Checkout.Running, l.Dynamic.Running, l.RunningRatio},
		} {
			fmt.Fprintf(w, "%s\tcheckout\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row.name, formatMs(row.checkout.P50), formatMs(row.checkout.P90),
				formatMs(row.checkout.P99), formatMs(row.checkout.Max), formatRatio(row.ratios.P50), formatRatio(row.ratios.P90), formatRatio(row.ratios.P99))
			fmt.Fprintf(w, "\tdynamic\t%s\t%s\t%s\t%s\t\t\t\n", formatMs(row.dynamic.P50), formatMs(row.dynamic.P90), formatMs(row.dynamic.P99), formatMs(row.dynamic.Max))
		}
		if l.CheckoutsWaited > 0 {
			fmt.Fprintf(w, "(%d checkouts found no replica available in the request and waited for the pool)\n", l.CheckoutsWaited)
		}
	}
	if t := report.Throughput; t != nil {
		verdict := "no wrong handout"
		if len(t.Violations) > 0 {
			verdict = fmt.Sprintf("%d WRONG HANDOUTS", len(t.Violations))
		}
		fmt.Fprintf(w, "\n== 2. Throughput: %d creates per level, pool of %d (filled in %.1fs); %d distinct volumes, %s ==\n",
			t.PoolReplicas, t.PoolReplicas, t.PoolFillSeconds, t.DistinctVolumes, verdict)
		fmt.Fprintln(w, "clients\tcheckouts/s\tPVC creates/s\tratio\tcheckout p50\tp99\tPVC create p50\tp99\tacquired in request\torphaned volumes\trefill")
		for _, level := range t.Levels {
			fmt.Fprintf(w, "%d\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d\t%.1fs\n", level.Clients, level.CheckoutsPerSecond, level.ClaimCreatesPerSecond,
				formatRatio(level.Ratio), formatMs(level.CheckoutCreate.P50), formatMs(level.CheckoutCreate.P99), formatMs(level.ClaimCreate.P50),
				formatMs(level.ClaimCreate.P99), level.AcquiredInRequest, level.Checkouts, level.OrphanedVolumes, level.RefillSeconds)
		}
		for i, violation := range t.Violations {
			if i == 5 {
				fmt.Fprintf(w, "  ... %d more in the JSON report\n", len(t.Violations)-5)
				break
			}
			fmt.Fprintf(w, "  wrong handout: %s\n", violation)
		}
	}
	if r := report.Refill; r != nil {
		fmt.Fprintf(w, "\n== 3. Pool refill: N=%d replicas available again after N checkouts, %d rounds ==\n", r.Replicas, r.Plain.Refill.N)
		fmt.Fprintln(w, "pool\tfirst fill\trefill p50\tmin\tmax\tcheckout create p50")
		for _, row := range []struct {
			name string
			kind RefillKind
		}{{"no init job", r.Plain}, {"init job", r.InitJob}} {
			fmt.Fprintf(w, "%s\t%.1fs\t%s\t%s\t%s\t%s\n", row.name, row.kind.FillSeconds, formatMs(row.kind.Refill.P50),
				formatMs(row.kind.Refill.Min), formatMs(row.kind.Refill.Max), formatMs(row.kind.Checkouts.P50))
		}
	}
	if len(report.Memory) > 0 {
		fmt.Fprintln(w, "\n== 6. Memory (VmRSS) ==")
		fmt.Fprintln(w, "process\tpids\tidle\tmax during throughput\tsamples")
		for _, process := range report.Memory {
			loaded := "-"
			if process.Samples > 0 {
				loaded = fmt.Sprintf("%.1f MiB", float64(process.MaxLoadedKiB)/1024)
			}
			fmt.Fprintf(w, "%s\t%v\t%.1f MiB\t%s\t%d\n", process.Role, process.PIDs, float64(process.IdleKiB)/1024, loaded, process.Samples)
		}
	}
	if report.Error != "" {
		fmt.Fprintf(w, "\nFAILED: %s\n", report.Error)
	}
}
