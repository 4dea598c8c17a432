package main

import (
	"fmt"
	"image/color"
	"path/filepath"
	"sort"

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
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Y.Min, p.Y.Max = 0, 1
		p.Legend.Top, p.Legend.Left = true, true
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
	p.Y.Label.Text = "creates per second"
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	checkouts, claims := make(plotter.XYs, len(report.Levels)), make(plotter.XYs, len(report.Levels))
	for i, level := range report.Levels {
		checkouts[i] = plotter.XY{X: float64(level.Clients), Y: level.CheckoutsPerSecond}
		claims[i] = plotter.XY{X: float64(level.Clients), Y: level.ClaimCreatesPerSecond}
	}
	if err := plotutil.AddLinePoints(p, "checkouts/s (pvpool)", checkouts, "PVC creates/s (kube-apiserver, no provisioning)", claims); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "throughput.png")
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}
