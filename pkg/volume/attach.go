package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// AttachMode selects how an NBD export becomes a host block device.
type AttachMode string

const (
	// AttachAuto picks AttachKernelNBD when the kernel NBD client is available, AttachNBDFuse otherwise.
	AttachAuto AttachMode = "auto"
	// AttachKernelNBD connects /dev/nbdN to the export with nbd-client.
	AttachKernelNBD AttachMode = "nbd"
	// AttachNBDFuse exposes the export as a file with nbdfuse and puts a direct-I/O loop device on it.
	// (qemu-storage-daemon's own FUSE export is deliberately not used: with a direct-I/O loop device on top
	// it corrupts concurrent writes in qemu 7.2.)
	AttachNBDFuse AttachMode = "nbdfuse"
)

// ParseAttachMode validates a mode name.
func ParseAttachMode(s string) (AttachMode, error) {
	switch m := AttachMode(s); m {
	case AttachAuto, AttachKernelNBD, AttachNBDFuse:
		return m, nil
	}
	return "", fmt.Errorf("unknown attach mode %q (want auto, nbd or nbdfuse)", s)
}

// ResolveAttachMode turns AttachAuto into the mode this host supports.
func ResolveAttachMode(m AttachMode) AttachMode {
	if m != AttachAuto && m != "" {
		return m
	}
	if _, err := os.Stat("/dev/nbd0"); err == nil {
		if _, err := exec.LookPath("nbd-client"); err == nil {
			return AttachKernelNBD
		}
	}
	return AttachNBDFuse
}

// Device is an attached block device. It is plain data so callers can persist it and detach after a
// restart.
type Device struct {
	Mode AttachMode `json:"mode"`
	// Path is the block device node, e.g. /dev/loop3 or /dev/nbd0.
	Path string `json:"path"`
	// FuseMount is nbdfuse's mount point (AttachNBDFuse).
	FuseMount string `json:"fuseMount,omitempty"`
	// FusePID is nbdfuse's process id (AttachNBDFuse).
	FusePID int `json:"fusePID,omitempty"`
	// ReadOnly is set when the device refuses writes.
	ReadOnly bool `json:"readOnly,omitempty"`
}

// AttachConfig says which export to attach.
type AttachConfig struct {
	Mode       AttachMode
	NBDSocket  string
	ExportName string
	// WorkDir holds the nbdfuse mount point; it must be local.
	WorkDir  string
	ReadOnly bool
}

// Attach exposes an NBD export as a block device.
func Attach(ctx context.Context, cfg AttachConfig) (*Device, error) {
	if cfg.ExportName == "" {
		cfg.ExportName = defaultExport
	}
	switch ResolveAttachMode(cfg.Mode) {
	case AttachKernelNBD:
		return attachKernelNBD(ctx, cfg)
	case AttachNBDFuse:
		return attachNBDFuse(ctx, cfg)
	}
	return nil, fmt.Errorf("unknown attach mode %q", cfg.Mode)
}

func attachNBDFuse(ctx context.Context, cfg AttachConfig) (*Device, error) {
	mountpoint := filepath.Join(cfg.WorkDir, "fuse")
	// A previous attempt may have left the mount behind; reuse of the mount point needs it gone.
	if isMountpoint(mountpoint) {
		_, _ = run(ctx, "fusermount3", "-u", "-z", mountpoint)
	}
	if err := os.MkdirAll(mountpoint, 0o700); err != nil {
		return nil, err
	}
	pidFile := filepath.Join(cfg.WorkDir, "nbdfuse.pid")
	_ = os.Remove(pidFile)
	logFile, err := os.OpenFile(filepath.Join(cfg.WorkDir, "nbdfuse.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := []string{"-P", pidFile}
	if cfg.ReadOnly {
		args = append(args, "-r")
	}
	// A URI names the export; --unix would only reach the default one.
	args = append(args, filepath.Join(mountpoint, "disk"), "nbd+unix:///"+cfg.ExportName+"?socket="+cfg.NBDSocket)
	cmd := exec.Command("nbdfuse", args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	dev := &Device{Mode: AttachNBDFuse, FuseMount: mountpoint, FusePID: cmd.Process.Pid, ReadOnly: cfg.ReadOnly}
	// nbdfuse writes its pid file once it serves.
	deadline := time.Now().Add(startupTimeout)
	for {
		if _, err := os.Stat(pidFile); err == nil {
			break
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("nbdfuse exited before serving: %v: %s", err, readTail(filepath.Join(cfg.WorkDir, "nbdfuse.log")))
		case <-ctx.Done():
			_ = dev.stopFuse(context.WithoutCancel(ctx))
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = dev.stopFuse(context.WithoutCancel(ctx))
			return nil, errors.New("nbdfuse did not start in time")
		}
	}
	losetupArgs := []string{"--find", "--show", "--direct-io=on"}
	if cfg.ReadOnly {
		losetupArgs = append(losetupArgs, "--read-only")
	}
	losetupArgs = append(losetupArgs, filepath.Join(mountpoint, "disk"))
	out, err := run(ctx, "losetup", losetupArgs...)
	if err != nil {
		_ = dev.stopFuse(context.WithoutCancel(ctx))
		return nil, err
	}
	dev.Path = strings.TrimSpace(string(out))
	return dev, nil
}

func attachKernelNBD(ctx context.Context, cfg AttachConfig) (*Device, error) {
	var lastErr error
	for i := 0; ; i++ {
		path := fmt.Sprintf("/dev/nbd%d", i)
		if _, err := os.Stat(path); err != nil {
			if lastErr == nil {
				lastErr = errors.New("no free /dev/nbd device")
			}
			return nil, lastErr
		}
		// A connected device has a pid attribute.
		if _, err := os.Stat(fmt.Sprintf("/sys/block/nbd%d/pid", i)); err == nil {
			continue
		}
		args := []string{"-unix", cfg.NBDSocket, path, "-N", cfg.ExportName}
		if cfg.ReadOnly {
			args = append(args, "-readonly")
		}
		if _, err := run(ctx, "nbd-client", args...); err != nil {
			lastErr = err
			continue
		}
		return &Device{Mode: AttachKernelNBD, Path: path, ReadOnly: cfg.ReadOnly}, nil
	}
}

// Detach releases the block device. It must no longer be mounted. Detaching an already detached device
// succeeds.
func (d *Device) Detach(ctx context.Context) error {
	switch d.Mode {
	case AttachKernelNBD:
		if d.Path == "" {
			return nil
		}
		_, err := run(ctx, "nbd-client", "-d", d.Path)
		return err
	case AttachNBDFuse:
		if d.Path != "" && d.loopBackedByUs() {
			if _, err := run(ctx, "losetup", "-d", d.Path); err != nil {
				return err
			}
		}
		return d.stopFuse(ctx)
	}
	return fmt.Errorf("unknown attach mode %q", d.Mode)
}

// loopBackedByUs reports whether the loop device still points into our nbdfuse mount, so a device number
// reused by someone else is never detached.
func (d *Device) loopBackedByUs() bool {
	name := filepath.Base(d.Path)
	raw, err := os.ReadFile(filepath.Join("/sys/block", name, "loop", "backing_file"))
	if err != nil {
		return false
	}
	return strings.HasPrefix(strings.TrimSpace(string(raw)), d.FuseMount+"/")
}

func (d *Device) stopFuse(ctx context.Context) error {
	if d.FuseMount != "" && isMountpoint(d.FuseMount) {
		if _, err := run(ctx, "fusermount3", "-u", d.FuseMount); err != nil {
			// A busy mount (loop device still closing) is detached lazily; nbdfuse exits when released.
			if _, lerr := run(ctx, "fusermount3", "-u", "-z", d.FuseMount); lerr != nil {
				return errors.Join(err, lerr)
			}
		}
	}
	if d.FusePID > 0 && processAlive(d.FusePID) && isProcess(d.FusePID, "nbdfuse") {
		deadline := time.Now().Add(10 * time.Second)
		for processAlive(d.FusePID) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if processAlive(d.FusePID) {
			_ = syscall.Kill(d.FusePID, syscall.SIGKILL)
		}
	}
	return nil
}

// Healthy reports whether the device still works end to end (the bridge process lives).
func (d *Device) Healthy() bool {
	if _, err := os.Stat(d.Path); err != nil {
		return false
	}
	switch d.Mode {
	case AttachNBDFuse:
		return processAlive(d.FusePID) && d.loopBackedByUs()
	case AttachKernelNBD:
		_, err := os.Stat(filepath.Join("/sys/block", filepath.Base(d.Path), "pid"))
		return err == nil
	}
	return false
}

// DeviceSize returns the size in bytes of a block device.
func DeviceSize(ctx context.Context, path string) (int64, error) {
	out, err := run(ctx, "blockdev", "--getsize64", path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
}

func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z"
}

func isProcess(pid int, name string) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(comm)) == name
}

func isMountpoint(path string) bool {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	clean := filepath.Clean(path)
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && unescapeMountPath(fields[4]) == clean {
			return true
		}
	}
	return false
}

func unescapeMountPath(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

func readTail(path string) string {
	raw, _ := os.ReadFile(path)
	if len(raw) > 2000 {
		raw = raw[len(raw)-2000:]
	}
	return strings.TrimSpace(string(raw))
}
