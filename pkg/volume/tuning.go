package volume

import "strconv"

// imageNodeOptions are the blockdev-add options of a qcow2 node serving image: the one place the daemon's
// I/O settings are chosen, so DaemonSettings reports what runs.
func imageNodeOptions(node, image string) map[string]interface{} {
	return map[string]interface{}{
		"driver":    "qcow2",
		"node-name": node,
		"discard":   "unmap",
		"file": map[string]interface{}{
			"driver":   "file",
			"filename": image,
		},
	}
}

// DaemonSettings describes the I/O settings daemons serve an image of virtualSize bytes with, in QEMU's
// option names, for benchmarks and diagnostics.
func DaemonSettings(virtualSize int64) map[string]string {
	_ = virtualSize
	return map[string]string{
		"discard":              "unmap",
		"cache.direct":         "off",
		"cache.no-flush":       "off",
		"aio":                  "threads",
		"l2-cache-size":        "qemu default (32MiB max, capped to the image)",
		"cache-clean-interval": strconv.Itoa(600),
		"detect-zeroes":        "off",
		"iothread":             "none (main loop)",
	}
}

// AttachSettings describes how mode attaches exports, for benchmarks and diagnostics.
func AttachSettings(mode AttachMode) map[string]string {
	switch ResolveAttachMode(mode) {
	case AttachNBDFuse:
		return map[string]string{"mode": string(AttachNBDFuse), "nbdfuse.connections": "4 (nbdfuse default, multi-conn)", "loop.direct-io": "on"}
	case AttachKernelNBD:
		return map[string]string{"mode": string(AttachKernelNBD), "nbd-client.connections": "1"}
	}
	return nil
}
