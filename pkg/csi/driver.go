// Package csi implements the pvpool CSI plugin: thin qcow2 volumes carved out of a shared backing
// filesystem and served on nodes through qemu-storage-daemon (see pkg/volume).
package csi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/volume"
)

// DefaultDriverName keeps Subprovisioner's manifests working unmodified.
const DefaultDriverName = "subprovisioner.gitlab.io"

// Config configures a Driver.
type Config struct {
	DriverName string
	Version    string
	// NodeID identifies this node; required when the node service runs.
	NodeID string
	// Controller and Node select the services served.
	Controller bool
	Node       bool
	// Locator finds backing filesystems.
	Locator BackingLocator
	// RunDir holds per-volume daemon sockets and node state; local, survives plugin restarts.
	RunDir string
	// AgentSocket is where the node service accepts live-snapshot requests from controllers ("" = none).
	AgentSocket string
	// AttachMode selects how exports become block devices.
	AttachMode volume.AttachMode
	// MaxChainLength bounds backing chains (DefaultMaxChainLength when 0).
	MaxChainLength int
	// MaxVolumesPerNode is reported in NodeGetInfo (0 = unlimited).
	MaxVolumesPerNode int64
}

// Driver implements the CSI identity, controller and node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg    Config
	engine *engine
	locks  *keyLocks
	node   *nodeState
}

// NewDriver validates cfg and builds a driver.
func NewDriver(cfg Config) (*Driver, error) {
	if cfg.DriverName == "" {
		cfg.DriverName = DefaultDriverName
	}
	if cfg.Version == "" {
		cfg.Version = "0.1.0"
	}
	if cfg.Locator == nil {
		return nil, errors.New("a backing locator is required")
	}
	if cfg.MaxChainLength <= 0 {
		cfg.MaxChainLength = DefaultMaxChainLength
	}
	if cfg.AttachMode == "" {
		cfg.AttachMode = volume.AttachAuto
	}
	d := &Driver{cfg: cfg, locks: newKeyLocks()}
	d.engine = &engine{locator: cfg.Locator, maxChainLength: cfg.MaxChainLength}
	if cfg.Node {
		if cfg.NodeID == "" {
			return nil, errors.New("the node service needs a node ID")
		}
		if cfg.RunDir == "" {
			return nil, errors.New("the node service needs a run directory")
		}
		d.node = newNodeState(cfg)
	}
	d.engine.live = &liveFreezer{nodeID: cfg.NodeID, local: d.node}
	return d, nil
}

// Recover re-establishes volumes staged before a restart of the plugin.
func (d *Driver) Recover(ctx context.Context) error {
	if d.node == nil {
		return nil
	}
	return d.node.recover(ctx)
}

// Serve serves the CSI services on endpoint (unix:///path or a path) until ctx ends.
func (d *Driver) Serve(ctx context.Context, endpoint string) error {
	path, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(logRPC))
	csi.RegisterIdentityServer(srv, d)
	if d.cfg.Controller {
		csi.RegisterControllerServer(srv, d)
	}
	if d.cfg.Node {
		csi.RegisterNodeServer(srv, d)
	}
	var agentStop func()
	if d.cfg.Node && d.cfg.AgentSocket != "" {
		agentStop, err = d.node.serveAgent(ctx, d.cfg.AgentSocket)
		if err != nil {
			lis.Close()
			return err
		}
	}
	klog.InfoS("Serving CSI", "endpoint", path, "driver", d.cfg.DriverName, "controller", d.cfg.Controller, "node", d.cfg.Node, "nodeID", d.cfg.NodeID)
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	err = srv.Serve(lis)
	_ = os.Remove(path)
	if agentStop != nil {
		agentStop()
	}
	if d.node != nil {
		// Daemons keep serving staged volumes; only our connections to them close.
		d.node.close()
	}
	return err
}

func socketPath(endpoint string) (string, error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", err
	}
	if u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: only unix sockets are supported", endpoint)
	}
	return u.Host + u.Path, nil
}

var rpcSeq struct {
	sync.Mutex
	n uint64
}

func logRPC(ctx context.Context, req interface{}, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (interface{}, error) {
	rpcSeq.Lock()
	rpcSeq.n++
	id := rpcSeq.n
	rpcSeq.Unlock()
	logger := klog.FromContext(ctx).WithValues("method", info.FullMethod, "rpc", id)
	ctx = klog.NewContext(ctx, logger)
	logger.V(3).Info("GRPC request", "request", stripSecrets(req))
	resp, err := handler(ctx, req)
	if err != nil {
		logger.Error(err, "GRPC failed", "code", status.Code(err))
	} else {
		logger.V(3).Info("GRPC response", "response", stripSecrets(resp))
	}
	return resp, err
}

// keyLocks rejects concurrent operations on the same volume or snapshot, as the CSI spec suggests
// (ABORTED: the caller retries).
type keyLocks struct {
	mu   sync.Mutex
	held map[string]bool
}

func newKeyLocks() *keyLocks { return &keyLocks{held: map[string]bool{}} }

func (l *keyLocks) tryLock(keys ...string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if l.held[k] {
			return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", k)
		}
	}
	for _, k := range keys {
		l.held[k] = true
	}
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, k := range keys {
			delete(l.held, k)
		}
	}, nil
}
