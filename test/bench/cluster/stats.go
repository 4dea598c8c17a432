package main

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Summary describes a latency distribution in milliseconds.
type Summary struct {
	N    int     `json:"n"`
	Min  float64 `json:"minMs"`
	P50  float64 `json:"p50Ms"`
	P90  float64 `json:"p90Ms"`
	P99  float64 `json:"p99Ms"`
	Max  float64 `json:"maxMs"`
	Mean float64 `json:"meanMs"`
}

func milliseconds(samples []time.Duration) []float64 {
	ms := make([]float64, len(samples))
	for i, sample := range samples {
		ms[i] = float64(sample) / float64(time.Millisecond)
	}
	return ms
}

// summarize computes the distribution of samples (in milliseconds); the zero Summary for none.
func summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	sorted := append([]float64(nil), samples...)
	sort.Float64s(sorted)
	sum := 0.0
	for _, sample := range sorted {
		sum += sample
	}
	return Summary{
		N:    len(sorted),
		Min:  sorted[0],
		P50:  percentile(sorted, 50),
		P90:  percentile(sorted, 90),
		P99:  percentile(sorted, 99),
		Max:  sorted[len(sorted)-1],
		Mean: sum / float64(len(sorted)),
	}
}

// percentile is the nearest-rank percentile of sorted samples: the smallest sample that at least p%
// of the samples are at or below. With fewer than 100 samples p99 is therefore the maximum, which is
// the honest answer for so few.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

// Ratios compares two distributions percentile by percentile: slow / fast, so 10 means "fast takes a
// tenth of the time".
type Ratios struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
}

func ratios(slow, fast Summary) Ratios {
	return Ratios{P50: ratio(slow.P50, fast.P50), P90: ratio(slow.P90, fast.P90), P99: ratio(slow.P99, fast.P99)}
}

// ratio is a / b, or 0 when b is 0 (nothing measured), which JSON can carry and NaN cannot.
func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return 0
	}
	return a / b
}

// volumeHandouts records which checkout holds each volume, to catch a volume handed out twice.
type volumeHandouts map[string]string

// record notes that checkout holds volume and returns an error naming both checkouts when another one
// already held it.
func (handouts volumeHandouts) record(volume, checkout string) error {
	if volume == "" {
		return fmt.Errorf("checkout %s reports no volume", checkout)
	}
	if holder, taken := handouts[volume]; taken && holder != checkout {
		return fmt.Errorf("double handout: volume %s went to both %s and %s", volume, holder, checkout)
	}
	handouts[volume] = checkout
	return nil
}
