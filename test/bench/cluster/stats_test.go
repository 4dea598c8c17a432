package main

import (
	"strings"
	"testing"
	"time"
)

func TestSummarizeUsesNearestRank(t *testing.T) {
	samples := make([]float64, 0, 200)
	// 200 samples 1..200 in reverse order, so summarize has to sort them.
	for i := 200; i >= 1; i-- {
		samples = append(samples, float64(i))
	}
	got := summarize(samples)
	want := Summary{N: 200, Min: 1, P50: 100, P90: 180, P99: 198, Max: 200, Mean: 100.5}
	if got != want {
		t.Errorf("summarize(1..200) = %+v, want %+v", got, want)
	}
	if samples[0] != 200 {
		t.Errorf("summarize reordered its input")
	}
}

func TestPercentileOfFewSamplesIsAnObservedValue(t *testing.T) {
	sorted := []float64{10, 20, 30}
	for _, tc := range []struct {
		p    float64
		want float64
	}{{0, 10}, {33, 10}, {34, 20}, {50, 20}, {67, 30}, {99, 30}, {100, 30}} {
		if got := percentile(sorted, tc.p); got != tc.want {
			t.Errorf("p%v of %v = %v, want %v", tc.p, sorted, got, tc.want)
		}
	}
}

func TestSummarizeNothingIsZero(t *testing.T) {
	if got := summarize(nil); got != (Summary{}) {
		t.Errorf("summarize(nil) = %+v", got)
	}
}

func TestMilliseconds(t *testing.T) {
	got := milliseconds([]time.Duration{1500 * time.Microsecond, 2 * time.Second})
	if got[0] != 1.5 || got[1] != 2000 {
		t.Errorf("milliseconds = %v", got)
	}
}

func TestRatiosDivideSlowByFast(t *testing.T) {
	slow := Summary{N: 3, P50: 1000, P90: 2000, P99: 3000}
	fast := Summary{N: 3, P50: 100, P90: 400, P99: 0}
	got := ratios(slow, fast)
	if got.P50 != 10 || got.P90 != 5 || got.P99 != 0 {
		t.Errorf("ratios = %+v, want 10, 5 and 0 for an unmeasured p99", got)
	}
}

func TestVolumeHandoutsRejectsTheSameVolumeForTwoCheckouts(t *testing.T) {
	handouts := volumeHandouts{}
	if err := handouts.record("pv-1", "ns/a"); err != nil {
		t.Fatal(err)
	}
	if err := handouts.record("pv-2", "ns/b"); err != nil {
		t.Fatal(err)
	}
	// Seeing the same checkout again (a re-read of its status) is not a second handout.
	if err := handouts.record("pv-1", "ns/a"); err != nil {
		t.Errorf("re-recording the same holder: %v", err)
	}
	err := handouts.record("pv-1", "ns/c")
	if err == nil || !strings.Contains(err.Error(), "ns/a") || !strings.Contains(err.Error(), "ns/c") {
		t.Errorf("second holder of pv-1: got %v, want an error naming ns/a and ns/c", err)
	}
	if err := handouts.record("", "ns/d"); err == nil {
		t.Errorf("a checkout without a volume was accepted")
	}
}

func TestLogTicksLabelOneTwoFive(t *testing.T) {
	var labels []string
	for _, tick := range (logTicks{}).Ticks(80, 2100) {
		if tick.Label != "" {
			labels = append(labels, tick.Label)
		}
	}
	if got, want := strings.Join(labels, " "), "100 200 500 1000 2000"; got != want {
		t.Errorf("labels between 80 and 2100: %q, want %q", got, want)
	}
}

func TestCDFEndsAtOne(t *testing.T) {
	points := cdf([]float64{30, 10, 20, 20})
	if len(points) != 4 || points[0].X != 10 || points[0].Y != 0.25 || points[3].X != 30 || points[3].Y != 1 {
		t.Errorf("cdf = %v", points)
	}
}

func TestLogTicksWithinADecadeLabelEveryTick(t *testing.T) {
	var labels []string
	for _, tick := range (logTicks{}).Ticks(900, 4600) {
		if tick.Label != "" {
			labels = append(labels, tick.Label)
		}
	}
	if got, want := strings.Join(labels, " "), "900 1000 2000 3000 4000"; got != want {
		t.Errorf("labels between 900 and 4600: %q, want %q", got, want)
	}
}
