package csi

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestExtSuperblockSize(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed (hack/install-node-deps.sh installs it)")
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	size, err := extSuperblockSize(img)
	if err != nil || size != 64<<20 {
		t.Fatalf("size = %d, %v; want %d", size, err, 64<<20)
	}
	// Growing the file and the filesystem is seen in the superblock.
	if err := os.Truncate(img, 100<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("resize2fs", img).CombinedOutput(); err != nil {
		t.Fatalf("resize2fs: %v: %s", err, out)
	}
	if size, err := extSuperblockSize(img); err != nil || size != 100<<20 {
		t.Fatalf("size after resize = %d, %v", size, err)
	}
	raw := filepath.Join(t.TempDir(), "raw")
	if err := os.WriteFile(raw, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := extSuperblockSize(raw); err == nil {
		t.Error("zeroes read as an ext filesystem")
	}
}
