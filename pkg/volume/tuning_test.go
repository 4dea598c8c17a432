package volume

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestL2CacheBytesCoversTheImage(t *testing.T) {
	const cluster = 64 << 10
	for _, tc := range []struct {
		name        string
		size, want  int64
		clusterSize int64
	}{
		// 1 GiB = 16384 clusters of 8-byte entries: 128 KiB, two tables.
		{"1GiB", 1 << 30, 128 << 10, cluster},
		// QEMU's default (32 MiB) would cover only a quarter of this.
		{"1TiB", 1 << 40, 128 << 20, cluster},
		// Partial tables round up to whole clusters, and two tables are the minimum.
		{"tiny", 1 << 20, 2 * cluster, cluster},
		{"odd", 1<<30 + 512, 192 << 10, cluster},
		// Bigger clusters need fewer entries.
		{"2MiB clusters", 1 << 40, 4 << 20, 2 << 20},
		{"unknown cluster size uses the default", 1 << 30, 128 << 10, 0},
		{"bounded", 64 << 40, maxL2CacheBytes, cluster},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := l2CacheBytes(tc.size, tc.clusterSize); got != tc.want {
				t.Errorf("l2CacheBytes(%d, %d) = %d, want %d", tc.size, tc.clusterSize, got, tc.want)
			}
		})
	}
}

// The daemon uses io_uring wherever the kernel lets it, and worker threads elsewhere.
func TestDaemonPicksIOUringWhereAllowed(t *testing.T) {
	requireNodeTools(t)
	ctx := t.Context()
	image := filepath.Join(t.TempDir(), "img.qcow2")
	if err := CreateImage(ctx, image, 1<<30); err != nil {
		t.Fatal(err)
	}
	runDir, err := os.MkdirTemp("/run", "pvpool-volume-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	d, err := StartDaemon(ctx, DaemonConfig{Dir: runDir, Image: image})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(ctx)
	// io_uring_disabled=1 still lets root (this test) use io_uring; 2 disables it for everyone.
	want := aioIOUring
	if raw, err := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); err == nil && strings.TrimSpace(string(raw)) == "2" {
		want = aioThreads
	}
	if got := d.AIO(); got != want {
		t.Errorf("daemon uses aio=%q, want %q", got, want)
	}
	// A live snapshot opens the overlay with the same mode.
	overlay := filepath.Join(filepath.Dir(image), "top.qcow2")
	if err := CreateOverlay(ctx, overlay, "img.qcow2", 1<<30); err != nil {
		t.Fatal(err)
	}
	if err := d.Snapshot(ctx, overlay); err != nil {
		t.Fatal(err)
	}
	if got := d.AIO(); got != want {
		t.Errorf("after snapshot the daemon uses aio=%q, want %q", got, want)
	}
}
