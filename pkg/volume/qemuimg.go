package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// SectorSize is the granularity qcow2 virtual sizes must respect.
const SectorSize = 512

// ImageInfo is the subset of `qemu-img info --output=json` this package relies on.
type ImageInfo struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	ActualSize          int64  `json:"actual-size"`
	BackingFilename     string `json:"backing-filename,omitempty"`
	FullBackingFilename string `json:"full-backing-filename,omitempty"`
	BackingFormat       string `json:"backing-filename-format,omitempty"`
	DirtyFlag           bool   `json:"dirty-flag,omitempty"`
}

// Measurement is `qemu-img measure` output: bytes needed to store an image.
type Measurement struct {
	Required       int64 `json:"required"`
	FullyAllocated int64 `json:"fully-allocated"`
}

// CheckResult is the subset of `qemu-img check --output=json`.
type CheckResult struct {
	Filename         string `json:"filename"`
	Corruptions      int64  `json:"corruptions"`
	Leaks            int64  `json:"leaks"`
	CheckErrors      int64  `json:"check-errors"`
	LeaksFixed       int64  `json:"leaks-fixed"`
	CorruptionsFixed int64  `json:"corruptions-fixed"`
}

func checkSize(size int64) error {
	if size <= 0 || size%SectorSize != 0 {
		return fmt.Errorf("image size %d is not a positive multiple of %d", size, SectorSize)
	}
	return nil
}

// CreateImage creates a thin qcow2 image of the given virtual size. It refuses to overwrite an existing
// file so that a retried operation can never clobber an image somebody already uses.
func CreateImage(ctx context.Context, path string, size int64) error {
	if err := checkSize(size); err != nil {
		return err
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("create image %s: %w", path, os.ErrExist)
	}
	_, err := run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", path, strconv.FormatInt(size, 10))
	return err
}

// CreateOverlay creates a qcow2 image at path whose backing file is backing. backing is stored exactly as
// given; pass a name relative to path's directory so the chain survives being mounted elsewhere. The
// backing image is not opened (-u with an explicit size), which keeps creation constant-time at any chain
// depth and works while the backing image is locked by a running daemon. A size larger than the backing
// image reads as zeroes past the backing image's end.
func CreateOverlay(ctx context.Context, path, backing string, size int64) error {
	if err := checkSize(size); err != nil {
		return err
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("create overlay %s: %w", path, os.ErrExist)
	}
	backingPath := backing
	if !filepath.IsAbs(backingPath) {
		backingPath = filepath.Join(filepath.Dir(path), backing)
	}
	if _, err := os.Stat(backingPath); err != nil {
		return fmt.Errorf("create overlay %s: backing image: %w", path, err)
	}
	_, err := run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "qcow2",
		"-o", "lazy_refcounts=on", path, strconv.FormatInt(size, 10))
	return err
}

// ResizeImage grows an image that no daemon has open. Growing only touches the header and L1 table, so it
// takes constant time; shrinking is refused because it would destroy data.
func ResizeImage(ctx context.Context, path string, size int64) error {
	if err := checkSize(size); err != nil {
		return err
	}
	h, err := ReadHeader(path)
	if err != nil {
		return err
	}
	if size < h.VirtualSize {
		return fmt.Errorf("resize %s to %d: shrinking from %d is not supported", path, size, h.VirtualSize)
	}
	if size == h.VirtualSize {
		return nil
	}
	args := []string{"resize", "-q"}
	if backingNoLarger(path, h) {
		// qemu-img opens the whole backing chain by default, which makes a resize cost grow with chain
		// depth. It only needs the chain to zero the grown area when the backing image is larger than
		// this one (its data past our old end would show through); otherwise the image is opened alone.
		spec, err := json.Marshal(map[string]interface{}{"driver": "qcow2", "backing": nil,
			"file": map[string]interface{}{"driver": "file", "filename": path}})
		if err != nil {
			return err
		}
		args = append(args, "json:"+string(spec))
	} else {
		args = append(args, "-f", "qcow2", path)
	}
	_, err = run(ctx, "qemu-img", append(args, strconv.FormatInt(size, 10))...)
	return err
}

// backingNoLarger reports whether image (header h) has no backing image or one no larger than itself.
func backingNoLarger(path string, h *Header) bool {
	if h.BackingFile == "" {
		return true
	}
	backing := h.BackingFile
	if !filepath.IsAbs(backing) {
		backing = filepath.Join(filepath.Dir(path), backing)
	}
	bh, err := ReadHeader(backing)
	return err == nil && bh.VirtualSize <= h.VirtualSize
}

// Info describes one image. It uses force-share (-U) so it also works on images a daemon has open.
func Info(ctx context.Context, path string) (*ImageInfo, error) {
	out, err := run(ctx, "qemu-img", "info", "-U", "--output=json", path)
	if err != nil {
		return nil, err
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("parse qemu-img info of %s: %w", path, err)
	}
	return &info, nil
}

// BackingChain returns the image and all its backing images, top first.
func BackingChain(ctx context.Context, path string) ([]ImageInfo, error) {
	out, err := run(ctx, "qemu-img", "info", "-U", "--backing-chain", "--output=json", path)
	if err != nil {
		return nil, err
	}
	return parseBackingChain(out)
}

func parseBackingChain(out []byte) ([]ImageInfo, error) {
	var chain []ImageInfo
	if err := json.Unmarshal(out, &chain); err != nil {
		return nil, fmt.Errorf("parse qemu-img backing chain: %w", err)
	}
	if len(chain) == 0 {
		return nil, errors.New("qemu-img returned an empty backing chain")
	}
	for i := 0; i < len(chain)-1; i++ {
		if chain[i].BackingFilename == "" {
			return nil, fmt.Errorf("image %s has no backing file but is followed by %s", chain[i].Filename, chain[i+1].Filename)
		}
	}
	if last := chain[len(chain)-1]; last.BackingFilename != "" {
		return nil, fmt.Errorf("backing file %s of %s is missing from the chain", last.BackingFilename, last.Filename)
	}
	return chain, nil
}

// Measure reports how many bytes the image (with its backing chain) needs when written out flat.
func Measure(ctx context.Context, path string) (*Measurement, error) {
	out, err := run(ctx, "qemu-img", "measure", "-U", "--output=json", "-O", "qcow2", path)
	if err != nil {
		return nil, err
	}
	var m Measurement
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("parse qemu-img measure of %s: %w", path, err)
	}
	return &m, nil
}

// Check verifies an image's metadata. With repairLeaks it also frees clusters leaked by a daemon that was
// killed, which is harmless to data. Leaks alone are not an error; corruption is.
func Check(ctx context.Context, path string, repairLeaks bool) (*CheckResult, error) {
	args := []string{"check", "--output=json", "-f", "qcow2"}
	if repairLeaks {
		args = append(args, "-r", "leaks")
	}
	args = append(args, path)
	out, err := run(ctx, "qemu-img", args...)
	var res CheckResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("parse qemu-img check of %s: %w", path, jerr)
	}
	// Exit code 3 means leaks only: not corruption.
	var cerr *CommandError
	if err != nil && !(errors.As(err, &cerr) && cerr.ExitCode == 3) {
		return &res, err
	}
	if res.Corruptions > 0 || res.CheckErrors > 0 {
		return &res, fmt.Errorf("image %s is corrupt: %d corruptions, %d check errors", path, res.Corruptions, res.CheckErrors)
	}
	return &res, nil
}

// Flatten writes the full content of src (through its backing chain) into a new standalone image dst.
// It costs time proportional to the allocated data and is how chains are kept bounded. dst is written
// under a temporary name and renamed so a cancelled flatten never leaves a half image at dst.
func Flatten(ctx context.Context, src, dst string, size int64) error {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("flatten into %s: %w", dst, os.ErrExist)
	}
	tmp := dst + ".partial"
	_ = os.Remove(tmp)
	if _, err := run(ctx, "qemu-img", "convert", "-U", "-q", "-f", "qcow2", "-O", "qcow2", "-o", "lazy_refcounts=on", src, tmp); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if size > 0 {
		if err := ResizeImage(ctx, tmp, size); err != nil {
			_ = os.Remove(tmp)
			return err
		}
	}
	return os.Rename(tmp, dst)
}
