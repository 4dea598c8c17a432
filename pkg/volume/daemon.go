package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DaemonConfig describes one qemu-storage-daemon serving one qcow2 image (with its backing chain) as an
// NBD export on a unix socket.
type DaemonConfig struct {
	// Dir holds the daemon's sockets, pid file and log; it must be on a local filesystem (unix sockets).
	Dir string
	// Image is the top image of the chain.
	Image string
	// ReadOnly opens the image read-only and exports it read-only.
	ReadOnly bool
	// ExportName is the NBD export name; "disk" when empty.
	ExportName string
	// Binary overrides the qemu-storage-daemon executable.
	Binary string
}

const (
	exportID       = "export0"
	defaultExport  = "disk"
	qmpSocketName  = "qmp.sock"
	nbdSocketName  = "nbd.sock"
	pidFileName    = "qsd.pid"
	logFileName    = "qsd.log"
	startupTimeout = 15 * time.Second
)

// Daemon supervises one qemu-storage-daemon through one persistent QMP connection.
type Daemon struct {
	cfg DaemonConfig

	mu      sync.Mutex // serializes graph changes (snapshot, resize, stop)
	qmp     *QMPClient
	pid     int
	exited  chan struct{} // closed when a daemon we started exits; nil for adopted daemons
	topNode string
	nodeSeq int
	// aio is the file I/O mode the daemon accepted; empty until the first image node is added.
	aio string
}

func (c DaemonConfig) exportName() string {
	if c.ExportName == "" {
		return defaultExport
	}
	return c.ExportName
}

// QMPSocket is the path of the daemon's monitor socket.
func (c DaemonConfig) QMPSocket() string { return filepath.Join(c.Dir, qmpSocketName) }

// NBDSocket is the path of the daemon's NBD server socket.
func (c DaemonConfig) NBDSocket() string { return filepath.Join(c.Dir, nbdSocketName) }

// StartDaemon starts qemu-storage-daemon for cfg.Image and exports it over NBD. The daemon runs in its
// own session so that it outlives a restart of the calling process; AdoptDaemon reconnects to it.
func StartDaemon(ctx context.Context, cfg DaemonConfig) (*Daemon, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-storage-daemon"
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	for _, name := range []string{qmpSocketName, nbdSocketName, pidFileName} {
		_ = os.Remove(filepath.Join(cfg.Dir, name))
	}
	logFile, err := os.OpenFile(filepath.Join(cfg.Dir, logFileName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(cfg.Binary,
		"--chardev", "socket,id=qmp0,path="+cfg.QMPSocket()+",server=on,wait=off",
		"--monitor", "chardev=qmp0",
		"--pidfile", filepath.Join(cfg.Dir, pidFileName))
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(d.exited)
	}()
	if err := d.setup(ctx); err != nil {
		d.kill()
		return nil, fmt.Errorf("start qemu-storage-daemon for %s: %w (log: %s)", cfg.Image, err, d.logTail())
	}
	return d, nil
}

func (d *Daemon) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	if err := d.connect(ctx); err != nil {
		return err
	}
	d.nodeSeq++
	node := fmt.Sprintf("fmt%d", d.nodeSeq)
	if err := d.addImageNode(ctx, node, d.cfg.Image, map[string]interface{}{"read-only": d.cfg.ReadOnly}); err != nil {
		return err
	}
	d.topNode = node
	if err := d.qmp.Execute(ctx, "nbd-server-start", map[string]interface{}{
		// nbd-server-start takes the legacy SocketAddress form with a "data" wrapper.
		"addr": map[string]interface{}{"type": "unix", "data": map[string]interface{}{"path": d.cfg.NBDSocket()}},
	}, nil); err != nil {
		return err
	}
	return d.addExport(ctx)
}

// addImageNode opens image as a qcow2 node with the daemon's I/O settings (tuning.go). io_uring is tried
// first; where it is refused the daemon falls back to worker threads for good.
func (d *Daemon) addImageNode(ctx context.Context, node, image string, extra map[string]interface{}) error {
	modes := []string{aioIOUring, aioThreads}
	if d.aio != "" {
		modes = []string{d.aio}
	}
	var errs []error
	for _, aio := range modes {
		opts, err := imageNodeOptions(node, image, aio)
		if err != nil {
			return err
		}
		for k, v := range extra {
			opts[k] = v
		}
		err = d.qmp.Execute(ctx, "blockdev-add", opts, nil)
		if err == nil {
			d.aio = aio
			return nil
		}
		errs = append(errs, fmt.Errorf("aio=%s: %w", aio, err))
		var qerr *QMPError
		if !errors.As(err, &qerr) {
			break // the connection failed, not the option
		}
	}
	return errors.Join(errs...)
}

// AIO reports the file I/O mode the daemon uses ("io_uring" or "threads"; empty for an adopted daemon
// that has not opened an image since).
func (d *Daemon) AIO() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.aio
}

func (d *Daemon) addExport(ctx context.Context) error {
	return d.qmp.Execute(ctx, "block-export-add", map[string]interface{}{
		"type":      "nbd",
		"id":        exportID,
		"node-name": d.topNode,
		"name":      d.cfg.exportName(),
		"writable":  !d.cfg.ReadOnly,
	}, nil)
}

func (d *Daemon) delExport(ctx context.Context) error {
	if err := d.qmp.Execute(ctx, "block-export-del", map[string]interface{}{"id": exportID, "mode": "hard"}, nil); err != nil {
		return err
	}
	_, err := d.qmp.WaitEvent(ctx, "BLOCK_EXPORT_DELETED", func(data json.RawMessage) bool {
		var ev struct {
			ID string `json:"id"`
		}
		return json.Unmarshal(data, &ev) == nil && ev.ID == exportID
	})
	return err
}

// connect dials the monitor, retrying while the daemon starts up.
func (d *Daemon) connect(ctx context.Context) error {
	for {
		qmp, err := DialQMP(ctx, d.cfg.QMPSocket())
		if err == nil {
			d.qmp = qmp
			return nil
		}
		if !d.Alive() {
			return fmt.Errorf("daemon exited: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect to %s: %w (last error: %v)", d.cfg.QMPSocket(), ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// AdoptDaemon reconnects to a daemon started earlier (possibly by a previous instance of this process)
// for cfg, as found through its pid file and monitor socket.
func AdoptDaemon(ctx context.Context, cfg DaemonConfig) (*Daemon, error) {
	raw, err := os.ReadFile(filepath.Join(cfg.Dir, pidFileName))
	if err != nil {
		return nil, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("pid file of daemon in %s: %w", cfg.Dir, err)
	}
	d := &Daemon{cfg: cfg, pid: pid}
	if !d.Alive() {
		return nil, fmt.Errorf("daemon %d for %s is not running", pid, cfg.Image)
	}
	cctx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	if err := d.connect(cctx); err != nil {
		return nil, err
	}
	var exports []struct {
		ID       string `json:"id"`
		NodeName string `json:"node-name"`
	}
	if err := d.qmp.Execute(ctx, "query-block-exports", nil, &exports); err != nil {
		d.qmp.Close()
		return nil, err
	}
	for _, e := range exports {
		if e.ID == exportID {
			d.topNode = e.NodeName
		}
	}
	if d.topNode == "" {
		d.qmp.Close()
		return nil, fmt.Errorf("daemon %d for %s has no export %s", pid, cfg.Image, exportID)
	}
	// Node names created later must not collide with the adopted ones.
	d.nodeSeq = int(time.Now().UnixNano() % 1_000_000_000)
	return d, nil
}

// Config returns the daemon's configuration.
func (d *Daemon) Config() DaemonConfig { return d.cfg }

// PID returns the daemon's process id.
func (d *Daemon) PID() int { return d.pid }

// Alive reports whether the daemon process still runs.
func (d *Daemon) Alive() bool {
	if d.exited != nil {
		select {
		case <-d.exited:
			return false
		default:
			return true
		}
	}
	if d.pid <= 0 {
		return false
	}
	return processAlive(d.pid)
}

// Query runs a read-only QMP command through the daemon's connection.
func (d *Daemon) Query(ctx context.Context, command string, args, result interface{}) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.qmp.Execute(ctx, command, args, result)
}

// TopImage returns the file name of the image the daemon currently writes to.
func (d *Daemon) TopImage(ctx context.Context) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.topImageLocked(ctx)
}

func (d *Daemon) topImageLocked(ctx context.Context) (string, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
		File     string `json:"file"`
	}
	if err := d.qmp.Execute(ctx, "query-named-block-nodes", map[string]interface{}{"flat": true}, &nodes); err != nil {
		return "", err
	}
	for _, n := range nodes {
		if n.NodeName == d.topNode {
			return protocolFilename(n.File)
		}
	}
	return "", fmt.Errorf("node %s not found in daemon for %s", d.topNode, d.cfg.Image)
}

// Snapshot makes overlay the daemon's new top image while it keeps serving I/O: the current top image
// becomes read-only and frozen, so it can back snapshots and clones. overlay must already exist (see
// CreateOverlay) with the current top image as its backing file. Writes acknowledged before Snapshot
// returns are in the frozen image.
func (d *Daemon) Snapshot(ctx context.Context, overlay string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.ReadOnly {
		return errors.New("cannot snapshot a read-only daemon")
	}
	d.nodeSeq++
	node := fmt.Sprintf("fmt%d", d.nodeSeq)
	// The current top node becomes the overlay's backing through blockdev-snapshot.
	if err := d.addImageNode(ctx, node, overlay, map[string]interface{}{"backing": nil}); err != nil {
		return err
	}
	if err := d.qmp.Execute(ctx, "blockdev-snapshot", map[string]interface{}{"node": d.topNode, "overlay": node}, nil); err != nil {
		_ = d.qmp.Execute(context.WithoutCancel(ctx), "blockdev-del", map[string]interface{}{"node-name": node}, nil)
		return err
	}
	d.topNode = node
	return nil
}

// Resize grows the served image. An NBD export pins the image size, so the export is removed, the node
// resized and the export re-added: NBD clients are disconnected and must reconnect.
func (d *Daemon) Resize(ctx context.Context, size int64) error {
	if err := checkSize(size); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.delExport(ctx); err != nil {
		return err
	}
	resizeErr := d.qmp.Execute(ctx, "block_resize", map[string]interface{}{"node-name": d.topNode, "size": size}, nil)
	if err := d.addExport(context.WithoutCancel(ctx)); err != nil {
		return errors.Join(resizeErr, err)
	}
	return resizeErr
}

// Stop shuts the daemon down cleanly (images are flushed and closed), killing it if it does not exit.
func (d *Daemon) Stop(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.qmp != nil && !d.qmp.Closed() {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = d.delExport(qctx)
		_ = d.qmp.Execute(qctx, "quit", nil, nil)
		cancel()
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.Alive() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if d.Alive() {
		d.kill()
	}
	if d.qmp != nil {
		d.qmp.Close()
	}
	for _, name := range []string{qmpSocketName, nbdSocketName, pidFileName} {
		_ = os.Remove(filepath.Join(d.cfg.Dir, name))
	}
	return nil
}

// Close drops the QMP connection but leaves the daemon running (used when the supervising process exits).
func (d *Daemon) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.qmp != nil {
		d.qmp.Close()
	}
}

func (d *Daemon) kill() {
	if d.pid > 0 {
		_ = syscall.Kill(d.pid, syscall.SIGKILL)
	}
	if d.exited != nil {
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
		}
	} else {
		for i := 0; i < 250 && d.Alive(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if d.qmp != nil {
		d.qmp.Close()
	}
}

func (d *Daemon) logTail() string {
	raw, _ := os.ReadFile(filepath.Join(d.cfg.Dir, logFileName))
	if len(raw) > 2000 {
		raw = raw[len(raw)-2000:]
	}
	return strings.TrimSpace(string(raw))
}

// protocolFilename extracts the image file name from a node's filename, which QEMU turns into a "json:"
// description once the node's backing differs from its header (as after blockdev-snapshot).
func protocolFilename(filename string) (string, error) {
	rest, ok := strings.CutPrefix(filename, "json:")
	if !ok {
		return filename, nil
	}
	var desc struct {
		File struct {
			Filename string `json:"filename"`
		} `json:"file"`
	}
	if err := json.Unmarshal([]byte(rest), &desc); err != nil || desc.File.Filename == "" {
		return "", fmt.Errorf("cannot find the image file in %q", filename)
	}
	return desc.File.Filename, nil
}
