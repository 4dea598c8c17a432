// Command pvpool-csi is the pvpool CSI plugin: thin qcow2 Block and Filesystem volumes carved out of a
// shared backing filesystem, with constant-time snapshot, clone and expansion.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	pvcsi "github.com/pvpool/pvpool/pkg/csi"
	"github.com/pvpool/pvpool/pkg/volume"
)

var version = "0.1.0"

func main() {
	klog.InitFlags(nil)
	var (
		endpoint       = flag.String("endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix socket)")
		driverName     = flag.String("drivername", pvcsi.DefaultDriverName, "CSI driver name")
		nodeID         = flag.String("nodeid", "", "node ID (default: the host name); required by the node service")
		mode           = flag.String("mode", "all", "services to serve: controller, node or all")
		backingDir     = flag.String("backing-dir", "", "directory holding the backing filesystem (local, or NFS mounted on every node); volumes go to <backing-dir>/<basePath>")
		runDir         = flag.String("run-dir", "/run/pvpool-csi", "node state: daemon sockets and staged-volume records (local, kept across plugin restarts)")
		attachMode     = flag.String("attach-mode", string(volume.AttachAuto), "how exports become block devices: auto, nbd (kernel NBD) or nbdfuse (nbdfuse + loop device)")
		agentSocket    = flag.String("agent-socket", "", "node: unix socket on which controllers request live snapshots of volumes staged here (default <run-dir>/agent.sock)")
		maxChain       = flag.Int("max-chain-length", pvcsi.DefaultMaxChainLength, "longest qcow2 backing chain; deeper images are written flat")
		maxVolumes     = flag.Int64("max-volumes-per-node", 0, "reported to the scheduler (0 = unlimited)")
		kubeletDir     = flag.String("kubelet-registration-dir", "", "node: register with kubelet through a socket in this directory (e.g. /var/lib/kubelet/plugins_registry); empty = don't")
		kubeletCSIPath = flag.String("kubelet-csi-endpoint", "", "node: CSI socket path as kubelet sees it (default: the --endpoint path)")
		resolveClaims  = flag.Bool("resolve-backing-claims", false, "find backingClaimName's directory through the Kubernetes API (claim -> local/hostPath PersistentVolume, under --host-root); without it every claim is served from --backing-dir")
		hostRoot       = flag.String("host-root", "", "where the host's root filesystem is mounted in this container (with --resolve-backing-claims)")
		kubeconfig     = flag.String("kubeconfig", "", "kubeconfig for --resolve-backing-claims (default: in-cluster configuration)")
		showVersion    = flag.Bool("version", false, "print the version and exit")
	)
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	locator, err := backingLocator(*backingDir, *resolveClaims, *hostRoot, *kubeconfig, *driverName, *runDir)
	if err == nil {
		err = run(locator, *endpoint, *driverName, *nodeID, *mode, *runDir, *attachMode, *agentSocket, *maxChain,
			*maxVolumes, *kubeletDir, *kubeletCSIPath)
	}
	if err != nil {
		klog.ErrorS(err, "pvpool-csi failed")
		klog.Flush()
		os.Exit(1)
	}
}

func backingLocator(backingDir string, resolveClaims bool, hostRoot, kubeconfig, driverName, runDir string) (pvcsi.BackingLocator, error) {
	if backingDir != "" {
		if err := os.MkdirAll(backingDir, 0o755); err != nil {
			return nil, err
		}
	}
	if !resolveClaims {
		if backingDir == "" {
			return nil, fmt.Errorf("--backing-dir is required without --resolve-backing-claims")
		}
		return pvcsi.DirLocator{Dir: backingDir}, nil
	}
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &pvcsi.ClaimLocator{Client: client, HostRoot: hostRoot, DriverName: driverName, Fallback: backingDir,
		CacheFile: filepath.Join(runDir, "backing-claims.json")}, nil
}

func run(locator pvcsi.BackingLocator, endpoint, driverName, nodeID, mode, runDir, attachMode, agentSocket string, maxChain int,
	maxVolumes int64, kubeletDir, kubeletCSIPath string) error {
	am, err := volume.ParseAttachMode(attachMode)
	if err != nil {
		return err
	}
	cfg := pvcsi.Config{DriverName: driverName, Version: version, NodeID: nodeID, Locator: locator,
		RunDir: runDir, AttachMode: am, MaxChainLength: maxChain, MaxVolumesPerNode: maxVolumes}
	switch mode {
	case "controller":
		cfg.Controller = true
	case "node":
		cfg.Node = true
	case "all":
		cfg.Controller, cfg.Node = true, true
	default:
		return fmt.Errorf("--mode must be controller, node or all, not %q", mode)
	}
	if cfg.Node {
		if cfg.NodeID == "" {
			if cfg.NodeID, err = os.Hostname(); err != nil {
				return err
			}
		}
		if agentSocket == "" {
			agentSocket = filepath.Join(runDir, "agent.sock")
		}
		cfg.AgentSocket = agentSocket
	}
	driver, err := pvcsi.NewDriver(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := driver.Recover(ctx); err != nil {
		klog.ErrorS(err, "Some staged volumes could not be recovered")
	}
	klog.InfoS("Starting pvpool-csi", "version", version, "driver", driverName, "mode", mode, "nodeID", cfg.NodeID,
		"attachMode", volume.ResolveAttachMode(am))
	if cfg.Node && kubeletDir != "" {
		csiPath := kubeletCSIPath
		if csiPath == "" {
			csiPath = endpoint
		}
		// kubelet wants a plain path.
		csiPath = strings.TrimPrefix(csiPath, "unix://")
		reg := &pvcsi.Registrar{DriverName: driverName, Endpoint: csiPath,
			Socket: filepath.Join(kubeletDir, driverName+"-reg.sock"), OnFailure: func(error) { stop() }}
		go func() {
			if err := reg.Serve(ctx); err != nil {
				klog.ErrorS(err, "Kubelet registration socket failed")
				stop()
			}
		}()
	}
	return driver.Serve(ctx, endpoint)
}
