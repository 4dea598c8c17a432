package volume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Header is the part of a qcow2 header that describes the image's place in a chain.
type Header struct {
	Version     uint32
	VirtualSize int64
	// ClusterSize is the allocation unit; L2 tables map one cluster each.
	ClusterSize int64
	// BackingFile is the backing file name exactly as stored (relative names are relative to the image).
	BackingFile string
}

var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// maxBackingNameLen is qcow2's limit for the backing file name.
const maxBackingNameLen = 1023

// ReadHeader parses the qcow2 header of path without starting qemu-img, which makes walking chains cheap.
func ReadHeader(path string) (*Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseHeader(f)
}

func parseHeader(r io.ReaderAt) (*Header, error) {
	buf := make([]byte, 32)
	if _, err := r.ReadAt(buf, 0); err != nil {
		return nil, fmt.Errorf("read qcow2 header: %w", err)
	}
	if string(buf[:4]) != string(qcow2Magic) {
		return nil, errors.New("not a qcow2 image")
	}
	h := &Header{
		Version:     binary.BigEndian.Uint32(buf[4:8]),
		VirtualSize: int64(binary.BigEndian.Uint64(buf[24:32])),
	}
	// qcow2 allows clusters of 512 bytes to 2 MiB.
	if bits := binary.BigEndian.Uint32(buf[20:24]); bits >= 9 && bits <= 21 {
		h.ClusterSize = int64(1) << bits
	} else {
		return nil, fmt.Errorf("qcow2 cluster bits %d out of range", bits)
	}
	off := binary.BigEndian.Uint64(buf[8:16])
	size := binary.BigEndian.Uint32(buf[16:20])
	if off != 0 && size != 0 {
		if size > maxBackingNameLen {
			return nil, fmt.Errorf("backing file name length %d exceeds %d", size, maxBackingNameLen)
		}
		name := make([]byte, size)
		if _, err := r.ReadAt(name, int64(off)); err != nil {
			return nil, fmt.Errorf("read backing file name: %w", err)
		}
		h.BackingFile = string(name)
	}
	return h, nil
}

// BackingOf resolves the backing file of image path to a path ("" when it has none).
func BackingOf(path string) (string, error) {
	h, err := ReadHeader(path)
	if err != nil {
		return "", err
	}
	if h.BackingFile == "" {
		return "", nil
	}
	if filepath.IsAbs(h.BackingFile) {
		return h.BackingFile, nil
	}
	return filepath.Join(filepath.Dir(path), h.BackingFile), nil
}

// MaxChainLength guards chain walks against cycles and absurd depths.
const MaxChainLength = 1000

// Chain returns path followed by its backing files down to the base, using backingOf to step.
func Chain(path string, backingOf func(string) (string, error)) ([]string, error) {
	chain := []string{path}
	seen := map[string]bool{filepath.Clean(path): true}
	for cur := path; ; {
		next, err := backingOf(cur)
		if err != nil {
			return chain, fmt.Errorf("backing file of %s: %w", cur, err)
		}
		if next == "" {
			return chain, nil
		}
		next = filepath.Clean(next)
		if seen[next] {
			return chain, fmt.Errorf("backing chain of %s loops at %s", path, next)
		}
		if len(chain) >= MaxChainLength {
			return chain, fmt.Errorf("backing chain of %s is longer than %d", path, MaxChainLength)
		}
		seen[next] = true
		chain = append(chain, next)
		cur = next
	}
}

// Reachable returns every image any of roots depends on, roots included. An error for one root fails the
// whole walk, so a caller deleting unreachable images never deletes on partial knowledge.
func Reachable(roots []string, backingOf func(string) (string, error)) (map[string]bool, error) {
	reach := map[string]bool{}
	for _, root := range roots {
		chain, err := Chain(root, backingOf)
		if err != nil {
			return nil, err
		}
		for _, p := range chain {
			reach[p] = true
		}
	}
	return reach, nil
}
