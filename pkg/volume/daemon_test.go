package volume

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireNodeTools skips unless this host can run daemons and attach devices the way a node does.
func requireNodeTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create loop devices and FUSE mounts")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s: %v", dev, err)
		}
	}
	for _, bin := range []string{"qemu-img", "qemu-io", "qemu-storage-daemon", "nbdfuse", "fusermount3", "losetup"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (hack/install-node-deps.sh installs it)", bin)
		}
	}
}

// alignedBuffer returns a buffer usable with O_DIRECT.
func alignedBuffer(size int) []byte {
	raw := make([]byte, size+4096)
	off := 4096 - int(uintptr(unsafePointer(raw))%4096)
	if off == 4096 {
		off = 0
	}
	return raw[off : off+size]
}

// writeInterleaved has workers write their own pattern into interleaved 64 KiB blocks of the first span
// bytes of dev, all at the same time, with direct I/O.
func writeInterleaved(t *testing.T, dev string, workers int, span int64, pattern func(worker int) byte) {
	t.Helper()
	const block = 64 << 10
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			buf := alignedBuffer(block)
			for i := range buf {
				buf[i] = pattern(w)
			}
			for off := int64(w) * block; off < span; off += int64(workers) * block {
				if _, err := f.WriteAt(buf, off); err != nil {
					errs <- fmt.Errorf("worker %d at %d: %w", w, off, err)
					return
				}
			}
			errs <- f.Sync()
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func verifyInterleaved(t *testing.T, dev string, workers int, span int64, pattern func(worker int) byte) {
	t.Helper()
	const block = 64 << 10
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuffer(block)
	for off := int64(0); off < span; off += block {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		want := bytes.Repeat([]byte{pattern(int(off/block) % workers)}, block)
		if !bytes.Equal(buf, want) {
			t.Fatalf("block at %d holds wrong data (first byte %#x, want %#x)", off, buf[0], want[0])
		}
	}
}

// qemuIORead verifies with qemu-io that image (through its chain) holds pattern at [off, off+n).
func qemuIORead(t *testing.T, image string, pattern byte, off, n int64) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-U", "-r", "-f", "qcow2", "-c",
		fmt.Sprintf("read -P %#x %d %d", pattern, off, n), image).CombinedOutput()
	if err != nil || strings.Contains(string(out), "verification failed") || strings.Contains(string(out), "error") {
		t.Fatalf("%s at [%d,+%d) is not %#x: %v: %s", image, off, n, pattern, err, out)
	}
}

func startAttached(t *testing.T, image, runDir string, readOnly bool) (*Daemon, *Device) {
	t.Helper()
	ctx := t.Context()
	d, err := StartDaemon(ctx, DaemonConfig{Dir: runDir, Image: image, ReadOnly: readOnly})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop(context.Background()) })
	dev, err := Attach(ctx, AttachConfig{Mode: AttachNBDFuse, NBDSocket: d.Config().NBDSocket(), WorkDir: runDir, ReadOnly: readOnly})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dev.Detach(context.Background()) })
	return d, dev
}

func TestDaemonLoopDeviceConcurrentWritesSnapshotResize(t *testing.T) {
	requireNodeTools(t)
	ctx := t.Context()
	imgDir := t.TempDir()
	runDir, err := os.MkdirTemp("/run", "pvpool-volume-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	base := filepath.Join(imgDir, "base.qcow2")
	const size = 64 << 20
	if err := CreateImage(ctx, base, size); err != nil {
		t.Fatal(err)
	}
	d, dev := startAttached(t, base, runDir, false)
	if !strings.HasPrefix(dev.Path, "/dev/loop") || !dev.Healthy() {
		t.Fatalf("device = %+v, healthy %v", dev, dev.Healthy())
	}
	if got, err := DeviceSize(ctx, dev.Path); err != nil || got != size {
		t.Fatalf("device size = %d, %v; want %d", got, err, size)
	}
	// Direct I/O on the loop device: the combination that corrupts with qsd's own FUSE export.
	if raw, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev.Path), "loop", "dio")); err != nil || strings.TrimSpace(string(raw)) != "1" {
		t.Fatalf("loop device does not use direct I/O: %q, %v", raw, err)
	}
	const workers, span = 8, 16 << 20
	first := func(w int) byte { return byte(0x10 + w) }
	writeInterleaved(t, dev.Path, workers, span, first)
	verifyInterleaved(t, dev.Path, workers, span, first)

	// Live snapshot: base freezes, writes go to the overlay.
	overlay := filepath.Join(imgDir, "top.qcow2")
	if err := CreateOverlay(ctx, overlay, "base.qcow2", size); err != nil {
		t.Fatal(err)
	}
	if err := d.Snapshot(ctx, overlay); err != nil {
		t.Fatal(err)
	}
	if top, err := d.TopImage(ctx); err != nil || top != overlay {
		t.Fatalf("top image = %q, %v; want %q", top, err, overlay)
	}
	second := func(w int) byte { return byte(0x80 + w) }
	writeInterleaved(t, dev.Path, workers, span, second)
	verifyInterleaved(t, dev.Path, workers, span, second)
	qemuIORead(t, base, 0x10, 0, 64<<10)
	qemuIORead(t, base, 0x17, 7*64<<10, 64<<10)

	// A new supervisor adopts the running daemon through its pid file and socket.
	d.Close()
	adopted, err := AdoptDaemon(ctx, DaemonConfig{Dir: runDir, Image: base})
	if err != nil {
		t.Fatal(err)
	}
	if top, err := adopted.TopImage(ctx); err != nil || top != overlay {
		t.Fatalf("adopted top image = %q, %v", top, err)
	}

	// Online resize drops NBD clients: detach, resize, attach again.
	if err := dev.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if err := adopted.Resize(ctx, 2*size); err != nil {
		t.Fatal(err)
	}
	dev2, err := Attach(ctx, AttachConfig{Mode: AttachNBDFuse, NBDSocket: adopted.Config().NBDSocket(), WorkDir: runDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dev2.Detach(context.Background()) })
	if got, err := DeviceSize(ctx, dev2.Path); err != nil || got != 2*size {
		t.Fatalf("resized device size = %d, %v", got, err)
	}
	verifyInterleaved(t, dev2.Path, workers, span, second)

	if err := dev2.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(dev2.Path), "loop")); err == nil {
		// Loop devices may be released asynchronously; give the kernel a moment.
		time.Sleep(200 * time.Millisecond)
	}
	if err := adopted.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if adopted.Alive() {
		t.Fatal("daemon still alive after Stop")
	}
	for _, img := range []string{base, overlay} {
		if res, err := Check(ctx, img, false); err != nil || res.Leaks != 0 {
			t.Errorf("check %s after clean stop = %+v, %v", img, res, err)
		}
	}
	qemuIORead(t, overlay, 0x83, 3*64<<10, 64<<10)
	qemuIORead(t, overlay, 0, span, 2*size-span)
}

func TestReadOnlyDevice(t *testing.T) {
	requireNodeTools(t)
	ctx := t.Context()
	imgDir := t.TempDir()
	runDir, err := os.MkdirTemp("/run", "pvpool-volume-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	img := filepath.Join(imgDir, "ro.qcow2")
	if err := CreateImage(ctx, img, 8<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	_, dev := startAttached(t, img, runDir, true)
	if raw, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev.Path), "ro")); err != nil || strings.TrimSpace(string(raw)) != "1" {
		t.Fatalf("device is not read-only: %q, %v", raw, err)
	}
	if f, err := os.OpenFile(dev.Path, os.O_WRONLY, 0); err == nil {
		_, werr := f.WriteAt(make([]byte, 4096), 0)
		f.Close()
		if werr == nil {
			t.Fatal("write to a read-only device succeeded")
		}
	}
	verifyInterleaved(t, dev.Path, 1, 1<<20, func(int) byte { return 0x5a })
}
