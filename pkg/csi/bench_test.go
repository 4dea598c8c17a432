package csi

import (
	"fmt"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// BenchmarkSnapshotAndClone measures snapshot and clone of an unstaged volume holding little or much
// data: both create overlays only, so the time should not grow with the data.
func BenchmarkSnapshotAndClone(b *testing.B) {
	for _, dataMiB := range []int{1, 512} {
		b.Run(fmt.Sprintf("data=%dMiB", dataMiB), func(b *testing.B) {
			backing := b.TempDir()
			d, err := NewDriver(Config{Controller: true, Locator: DirLocator{Dir: backing}, MaxChainLength: 1 << 20})
			if err != nil {
				b.Fatal(err)
			}
			ctx := b.Context()
			resp, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: blockRWO,
				Parameters: testParams, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}})
			if err != nil {
				b.Fatal(err)
			}
			src := resp.Volume.VolumeId
			s, rec, err := d.lookupVolume(ctx, src)
			if err != nil {
				b.Fatal(err)
			}
			if out, err := runQemuIO(s.imagePath(rec.Head), fmt.Sprintf("write -P 0x5a 0 %dM", dataMiB)); err != nil {
				b.Fatalf("qemu-io: %v: %s", err, out)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("s%d", i), SourceVolumeId: src}); err != nil {
					b.Fatal(err)
				}
				if _, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("c%d", i), VolumeCapabilities: blockRWO,
					Parameters: testParams, VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
						Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src}}}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
