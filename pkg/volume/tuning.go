package volume

import (
	"fmt"
	"strconv"
)

// How a daemon does I/O on its image files. Measured with test/bench/storage on a 2-core VM, where the
// NBD/FUSE path is CPU-bound, so what counts is CPU per request:
//
//   - aio=io_uring submits and completes requests from the daemon's event loop; aio=threads hands every
//     request to a worker thread and back, two more context switches per request.
//   - The host page cache stays on (cache.direct off): with O_DIRECT every request waits for the disk, and
//     both aio=native and aio=io_uring measured slower than cached I/O, for reads and writes. Durability
//     does not depend on it: NBD flush and FUA reach the file as fdatasync either way.
//   - The L2 table cache covers the whole image (see l2CacheBytes).
const (
	aioIOUring = "io_uring"
	// aioThreads is the fallback where io_uring is refused (kernel.io_uring_disabled, a seccomp profile,
	// a QEMU built without it).
	aioThreads = "threads"
	// cacheCleanInterval returns L2 and refcount tables unused for that many seconds to the system, which
	// keeps a cache sized to a large image from holding memory for tables touched once.
	cacheCleanInterval = 600
	// maxL2CacheBytes bounds the L2 cache of one image: enough for 8 TiB with 64 KiB clusters.
	maxL2CacheBytes = 1 << 30
	// defaultClusterSize is qemu-img's, which CreateImage and CreateOverlay keep.
	defaultClusterSize = 64 << 10
)

// l2CacheBytes sizes the L2 table cache to map every cluster of the image: QEMU's default stops at 32 MiB
// (256 GiB of 64 KiB clusters), past which random I/O over a large volume re-reads L2 tables from disk. The
// cache is virtual memory that is only touched as tables are loaded, and cacheCleanInterval gives back
// what goes unused, so a large bound costs memory only for the part of the volume in use.
func l2CacheBytes(virtualSize, clusterSize int64) int64 {
	if clusterSize <= 0 {
		clusterSize = defaultClusterSize
	}
	const l2EntryBytes = 8
	clusters := (virtualSize + clusterSize - 1) / clusterSize
	bytes := (clusters*l2EntryBytes + clusterSize - 1) / clusterSize * clusterSize
	// QEMU needs room for at least two tables.
	bytes = max(bytes, 2*clusterSize)
	return min(bytes, maxL2CacheBytes)
}

// imageNodeOptions are the blockdev-add options of the qcow2 node serving image: the one place the
// daemon's I/O settings are chosen (see DaemonSettings).
func imageNodeOptions(node, image, aio string) (map[string]interface{}, error) {
	h, err := ReadHeader(image)
	if err != nil {
		return nil, fmt.Errorf("read header of %s: %w", image, err)
	}
	return map[string]interface{}{
		"driver":               "qcow2",
		"node-name":            node,
		"discard":              "unmap",
		"cache":                map[string]interface{}{"direct": false, "no-flush": false},
		"l2-cache-size":        l2CacheBytes(h.VirtualSize, h.ClusterSize),
		"cache-clean-interval": cacheCleanInterval,
		"file": map[string]interface{}{
			"driver":   "file",
			"filename": image,
			"aio":      aio,
		},
	}, nil
}

// DaemonSettings describes, in QEMU's option names, how a daemon serves an image of virtualSize bytes
// with the default cluster size; for benchmarks and diagnostics.
func DaemonSettings(virtualSize int64) map[string]string {
	return map[string]string{
		"aio":                  aioIOUring + " (" + aioThreads + " where io_uring is refused)",
		"cache.direct":         "off",
		"cache.no-flush":       "off",
		"discard":              "unmap",
		"detect-zeroes":        "off",
		"l2-cache-size":        strconv.FormatInt(l2CacheBytes(virtualSize, defaultClusterSize), 10),
		"cache-clean-interval": strconv.Itoa(cacheCleanInterval),
		"iothread":             "none (main loop)",
	}
}

// AttachSettings describes how mode attaches exports, for benchmarks and diagnostics.
func AttachSettings(mode AttachMode) map[string]string {
	switch ResolveAttachMode(mode) {
	case AttachNBDFuse:
		return map[string]string{"mode": string(AttachNBDFuse), "nbdfuse.connections": "4 (nbdfuse's default multi-conn)",
			"loop.direct-io": "on"}
	case AttachKernelNBD:
		return map[string]string{"mode": string(AttachKernelNBD), "nbd-client.connections": "1"}
	}
	return nil
}
