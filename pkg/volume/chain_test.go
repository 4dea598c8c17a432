package volume

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func fakeHeader(t *testing.T, version uint32, size uint64, backing string) []byte {
	t.Helper()
	buf := make([]byte, 512)
	copy(buf, qcow2Magic)
	binary.BigEndian.PutUint32(buf[4:], version)
	binary.BigEndian.PutUint32(buf[20:], 16) // 64 KiB clusters
	binary.BigEndian.PutUint64(buf[24:], size)
	if backing != "" {
		binary.BigEndian.PutUint64(buf[8:], 200)
		binary.BigEndian.PutUint32(buf[16:], uint32(len(backing)))
		copy(buf[200:], backing)
	}
	return buf
}

func TestParseHeader(t *testing.T) {
	h, err := parseHeader(bytes.NewReader(fakeHeader(t, 3, 1<<30, "base.qcow2")))
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != 3 || h.VirtualSize != 1<<30 || h.ClusterSize != 64<<10 || h.BackingFile != "base.qcow2" {
		t.Errorf("header = %+v", h)
	}
	h, err = parseHeader(bytes.NewReader(fakeHeader(t, 2, 4096, "")))
	if err != nil {
		t.Fatal(err)
	}
	if h.BackingFile != "" || h.VirtualSize != 4096 {
		t.Errorf("header without backing = %+v", h)
	}
	raw := fakeHeader(t, 3, 512, "x")
	raw[0] = 'X'
	if _, err := parseHeader(bytes.NewReader(raw)); err == nil {
		t.Error("bad magic accepted")
	}
	raw = fakeHeader(t, 3, 512, "x")
	binary.BigEndian.PutUint32(raw[20:], 30)
	if _, err := parseHeader(bytes.NewReader(raw)); err == nil {
		t.Error("cluster bits out of range accepted")
	}
	raw = fakeHeader(t, 3, 512, "x")
	binary.BigEndian.PutUint32(raw[16:], 5000)
	if _, err := parseHeader(bytes.NewReader(raw)); err == nil {
		t.Error("oversized backing name accepted")
	}
}

func graph(edges map[string]string) func(string) (string, error) {
	return func(p string) (string, error) {
		next, ok := edges[p]
		if !ok {
			return "", errors.New("missing image " + p)
		}
		return next, nil
	}
}

func TestChainAndReachable(t *testing.T) {
	edges := map[string]string{
		"/d/top":   "/d/mid",
		"/d/mid":   "/d/base",
		"/d/base":  "",
		"/d/clone": "/d/mid",
		"/d/other": "",
		"/d/loopA": "/d/loopB",
		"/d/loopB": "/d/loopA",
		"/d/dang":  "/d/gone",
	}
	chain, err := Chain("/d/top", graph(edges))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/d/top", "/d/mid", "/d/base"}; !reflect.DeepEqual(chain, want) {
		t.Errorf("chain = %v, want %v", chain, want)
	}
	if _, err := Chain("/d/loopA", graph(edges)); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Errorf("loop not detected: %v", err)
	}
	if _, err := Chain("/d/dang", graph(edges)); err == nil {
		t.Error("dangling backing file not reported")
	}
	reach, err := Reachable([]string{"/d/clone", "/d/other"}, graph(edges))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"/d/clone": true, "/d/mid": true, "/d/base": true, "/d/other": true}
	if !reflect.DeepEqual(reach, want) {
		t.Errorf("reachable = %v, want %v", reach, want)
	}
	if _, err := Reachable([]string{"/d/top", "/d/dang"}, graph(edges)); err == nil {
		t.Error("Reachable must fail when any chain cannot be read")
	}
}

func TestParseBackingChain(t *testing.T) {
	good := `[{"filename":"/d/top","backing-filename":"mid","virtual-size":2048},{"filename":"/d/mid","virtual-size":1024}]`
	chain, err := parseBackingChain([]byte(good))
	if err != nil || len(chain) != 2 || chain[0].BackingFilename != "mid" || chain[1].VirtualSize != 1024 {
		t.Fatalf("chain = %+v, err = %v", chain, err)
	}
	truncated := `[{"filename":"/d/top","backing-filename":"mid"}]`
	if _, err := parseBackingChain([]byte(truncated)); err == nil {
		t.Error("chain missing its backing image accepted")
	}
	if _, err := parseBackingChain([]byte(`[]`)); err == nil {
		t.Error("empty chain accepted")
	}
}

func requireQemuImg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (hack/install-node-deps.sh installs it)")
	}
}

// TestImagesOnDisk checks chain creation, resizing and flattening against real qemu-img.
func TestImagesOnDisk(t *testing.T) {
	requireQemuImg(t)
	ctx := t.Context()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	if err := CreateImage(ctx, base, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := CreateImage(ctx, base, 1<<20); err == nil {
		t.Fatal("CreateImage overwrote an existing image")
	}
	if err := CreateImage(ctx, filepath.Join(dir, "odd.qcow2"), 1000); err == nil {
		t.Fatal("size not a multiple of 512 accepted")
	}
	// Write a pattern into the base so the chain has data to carry.
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 64k", base).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	top := filepath.Join(dir, "top.qcow2")
	if err := CreateOverlay(ctx, top, "base.qcow2", 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := CreateOverlay(ctx, filepath.Join(dir, "x.qcow2"), "missing.qcow2", 4<<20); err == nil {
		t.Fatal("overlay on a missing backing image accepted")
	}
	h, err := ReadHeader(top)
	if err != nil {
		t.Fatal(err)
	}
	if h.BackingFile != "base.qcow2" || h.VirtualSize != 4<<20 || h.ClusterSize != 64<<10 {
		t.Errorf("overlay header = %+v", h)
	}
	chain, err := BackingChain(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1].VirtualSize != 1<<20 {
		t.Errorf("backing chain = %+v", chain)
	}
	files, err := Chain(top, BackingOf)
	if err != nil || len(files) != 2 || files[1] != base {
		t.Errorf("Chain = %v, %v", files, err)
	}
	if err := ResizeImage(ctx, top, 8<<20); err != nil {
		t.Fatal(err)
	}
	// The overlay was resized without opening its backing image; it must still name it.
	if h, err := ReadHeader(top); err != nil || h.BackingFile != "base.qcow2" || h.VirtualSize != 8<<20 {
		t.Errorf("resized overlay header = %+v, %v", h, err)
	}
	// An overlay smaller than its backing image is resized through the chain, so the grown area reads as
	// zeroes rather than the backing image's data past the overlay's old end.
	small := filepath.Join(dir, "small.qcow2")
	if err := CreateOverlay(ctx, small, "base.qcow2", 512<<10); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 512k 512k", base).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	if err := ResizeImage(ctx, small, 1<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 64k", "-c", "read -P 0 512k 512k", small).CombinedOutput(); err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Errorf("grown overlay of a larger backing image shows the wrong data: %v: %s", err, out)
	}
	if err := ResizeImage(ctx, top, 2<<20); err == nil {
		t.Error("shrink accepted")
	}
	flat := filepath.Join(dir, "flat.qcow2")
	if err := Flatten(ctx, top, flat, 16<<20); err != nil {
		t.Fatal(err)
	}
	fh, err := ReadHeader(flat)
	if err != nil {
		t.Fatal(err)
	}
	if fh.BackingFile != "" || fh.VirtualSize != 16<<20 {
		t.Errorf("flattened header = %+v", fh)
	}
	// The flat image holds the pattern from the base and zeroes past the base's end.
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 64k", "-c", "read -P 0 1M 15M", flat).CombinedOutput(); err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Errorf("flattened content wrong: %v: %s", err, out)
	}
	res, err := Check(ctx, flat, false)
	if err != nil || res.Leaks != 0 {
		t.Errorf("check = %+v, %v", res, err)
	}
	m, err := Measure(ctx, top)
	if err != nil || m.Required <= 0 || m.FullyAllocated < 8<<20 {
		t.Errorf("measure = %+v, %v", m, err)
	}
}

func TestProtocolFilename(t *testing.T) {
	plain, err := protocolFilename("/d/top.qcow2")
	if err != nil || plain != "/d/top.qcow2" {
		t.Errorf("plain = %q, %v", plain, err)
	}
	j := `json:{"backing": {"driver": "qcow2"}, "driver": "qcow2", "file": {"driver": "file", "filename": "/d/o.qcow2"}}`
	got, err := protocolFilename(j)
	if err != nil || got != "/d/o.qcow2" {
		t.Errorf("json = %q, %v", got, err)
	}
	if _, err := protocolFilename(`json:{"driver":"nbd"}`); err == nil {
		t.Error("json without a file accepted")
	}
}
