package main

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"sort"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

var (
	colorCheckout = color.RGBA{R: 0x1b, G: 0x9e, B: 0x77, A: 0xff}
	colorDynamic  = color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 0xff}
)

// cdf is the empirical cumulative distribution of samples: for each sorted sample, the fraction of
// samples at or below it.
func cdf(samples []float64) plotter.XYs {
	sorted := append([]float64(nil), samples...)
	sort.Float64s(sorted)
	points := make(plotter.XYs, len(sorted))
	for i, sample := range sorted {
		points[i].X = sample
		points[i].Y = float64(i+1) / float64(len(sorted))
	}
	return points
}

// plotLatencyCDFs writes one PNG per latency (API create, Bound, Running), each with the checkout
// and the dynamic provisioning distribution on a logarithmic time axis: checkouts are expected to
// be an order of magnitude apart from dynamic provisioning, which a linear axis would flatten.
// It returns the files written.
func plotLatencyCDFs(dir string, report *LatencyReport) ([]string, error) {
	figures := []struct {
		file, title       string
		checkout, dynamic []float64
	}{
		{"latency-api-create.png", "create call (API latency)", report.Checkout.Samples.APICreateMs, report.Dynamic.Samples.APICreateMs},
		{"latency-bound.png", "create -> claim Bound", report.Checkout.Samples.BoundMs, report.Dynamic.Samples.BoundMs},
		{"latency-running.png", "create -> pod Running", report.Checkout.Samples.RunningMs, report.Dynamic.Samples.RunningMs},
	}
	var written []string
	for _, figure := range figures {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s, %d checkouts vs %d dynamic claims (%s %s)", figure.title,
			len(figure.checkout), len(figure.dynamic), report.VolumeMode, report.Size)
		p.X.Label.Text = "milliseconds (log scale)"
		p.Y.Label.Text = "fraction of samples at or below"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = logTicks{}
		p.Y.Min, p.Y.Max = 0, 1
		// A CDF's lower right is empty: the slow curve rises there only near the top.
		p.Legend.Top, p.Legend.Left = false, false
		p.Add(plotter.NewGrid())
		for _, series := range []struct {
			name    string
			samples []float64
			color   color.Color
		}{{"checkout", figure.checkout, colorCheckout}, {"dynamic provisioning", figure.dynamic, colorDynamic}} {
			if len(series.samples) == 0 {
				continue
			}
			line, err := plotter.NewLine(positive(cdf(series.samples)))
			if err != nil {
				return written, err
			}
			line.Color, line.Width = series.color, vg.Points(1.5)
			p.Add(line)
			p.Legend.Add(series.name, line)
		}
		path := filepath.Join(dir, figure.file)
		if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
			return written, fmt.Errorf("writing %s: %w", path, err)
		}
		written = append(written, path)
	}
	return written, nil
}

// logTicks labels 1, 2 and 5 times each power of ten, with unlabelled ticks between: latencies span
// one or two decades, where plot.LogTicks would label a single value.
type logTicks struct{}

func (logTicks) Ticks(min, max float64) []plot.Tick {
	ticks := logTicksLabelled(min, max, func(step int) bool { return step == 1 || step == 2 || step == 5 })
	labelled := 0
	for _, tick := range ticks {
		if tick.Label != "" {
			labelled++
		}
	}
	if labelled < 3 {
		// Less than a decade: label every tick.
		return logTicksLabelled(min, max, func(int) bool { return true })
	}
	return ticks
}

func logTicksLabelled(min, max float64, labelled func(step int) bool) []plot.Tick {
	var ticks []plot.Tick
	for decade := math.Pow(10, math.Floor(math.Log10(min))); decade <= max; decade *= 10 {
		for step := 1; step < 10; step++ {
			value := float64(step) * decade
			if value < min || value > max {
				continue
			}
			tick := plot.Tick{Value: value}
			if labelled(step) {
				tick.Label = strconv.FormatFloat(value, 'g', -1, 64)
			}
			ticks = append(ticks, tick)
		}
	}
	return ticks
}

// positive drops points a log axis cannot show (a zero latency only comes from a clock that did
// not move).
func positive(points plotter.XYs) plotter.XYs {
	kept := points[:0:0]
	for _, point := range points {
		if point.X > 0 {
			kept = append(kept, point)
		}
	}
	return kept
}

// plotThroughput writes checkouts/s and raw claim creates/s against the number of clients.
func plotThroughput(dir string, report *ThroughputReport) (string, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("throughput, %d creates per level (pool of %d)", report.PoolReplicas, report.PoolReplicas)
	p.X.Label.Text = "concurrent clients"
	p.Y.Label.Text = "creates per second (log scale)"
	// The two rates may be two orders of magnitude apart; on a log axis both stay readable. The
	// headroom above keeps the legend off the lines.
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = logTicks{}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	checkouts, claims := make(plotter.XYs, len(report.Levels)), make(plotter.XYs, len(report.Levels))
	for i, level := range report.Levels {
		checkouts[i] = plotter.XY{X: float64(level.Clients), Y: level.CheckoutsPerSecond}
		claims[i] = plotter.XY{X: float64(level.Clients), Y: level.ClaimCreatesPerSecond}
	}
	if err := plotutil.AddLinePoints(p, "checkouts/s (pvpool)", positive(checkouts), "PVC creates/s (kube-apiserver, no provisioning)", positive(claims)); err != nil {
		return "", err
	}
	lowest, highest := math.Inf(1), 0.0
	for _, level := range report.Levels {
		for _, rate := range []float64{level.CheckoutsPerSecond, level.ClaimCreatesPerSecond} {
			if rate > 0 {
				lowest, highest = math.Min(lowest, rate), math.Max(highest, rate)
			}
		}
	}
	if highest > 0 {
		p.Y.Min, p.Y.Max = lowest/2, highest*8
	}
	path := filepath.Join(dir, "throughput.png")
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}
