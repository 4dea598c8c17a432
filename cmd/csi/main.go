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
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	pvcsi "github.com/pvpool/pvpool/pkg/csi"
	"github.com/pvpool/pvpool/pkg/volume"
)

var version = "0.1.0"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "hold" {
		hold()
		return
	}
	klog.InitFlags(nil)
	var (
		endpoint        = flag.String("endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix socket)")
		driverName      = flag.String("drivername", pvcsi.DefaultDriverName, "CSI driver name")
		nodeID          = flag.String("nodeid", "", "node ID (default: the host name); required by the node service")
		mode            = flag.String("mode", "all", "services to serve: controller, node or all")
		backingDir      = flag.String("backing-dir", "", "directory holding the backing filesystem (local, or NFS mounted on every node); volumes go to <backing-dir>/<basePath>")
		runDir          = flag.String("run-dir", "/run/pvpool-csi", "node state: daemon sockets and staged-volume records (local, kept across plugin restarts)")
		attachMode      = flag.String("attach-mode", string(volume.AttachAuto), "how exports become block devices: auto, nbd (kernel NBD) or nbdfuse (nbdfuse + loop device)")
		agentSocket     = flag.String("agent-socket", "", "node: unix socket on which controllers request live snapshots of volumes staged here (default <run-dir>/agent.sock)")
		maxChain        = flag.Int("max-chain-length", pvcsi.DefaultMaxChainLength, "longest qcow2 backing chain; deeper images are written flat")
		maxVolumes      = flag.Int64("max-volumes-per-node", 0, "reported to the scheduler (0 = unlimited)")
		registrationDir = flag.String("kubelet-registration-dir", "", "node: register with kubelet through a socket in this directory (e.g. /var/lib/kubelet/plugins_registry); empty = don't")
		kubeletCSIPath  = flag.String("kubelet-csi-endpoint", "", "node: CSI socket path as kubelet sees it (default: the --endpoint path)")
		backingAccess   = flag.String("backing-access", "dir", "how backingClaimName is reached: dir (every claim is --backing-dir), path (through the API: claim -> local/hostPath PersistentVolume, under --host-root; no pods) or pods (a holder pod on this node mounts the claim; any volume type; the in-cluster default)")
		hostRoot        = flag.String("host-root", "", "where the host's root filesystem is mounted in this container (--backing-access=path, and hostPath volumes with pods)")
		kubeconfig      = flag.String("kubeconfig", "", "kubeconfig for --backing-access=path|pods (default: in-cluster configuration)")
		nodeName        = flag.String("node-name", os.Getenv("NODE_NAME"), "--backing-access=pods: the Kubernetes node this plugin runs on, where its holder pods run (default $NODE_NAME)")
		holderImage     = flag.String("holder-image", "", "--backing-access=pods: image of the holder pods, this plugin's own (they run `pvpool-csi hold`)")
		kubeletDir      = flag.String("kubelet-dir", "/var/lib/kubelet", "--backing-access=pods: kubelet's root directory as seen here, mounted with HostToContainer or Bidirectional propagation (holder pods' volumes are found under it)")
		holderIdle      = flag.Duration("holder-idle-timeout", pvcsi.DefaultHolderIdleTimeout, "--backing-access=pods: delete a holder pod unused for this long (never while a volume of its claim is staged on this node)")
		showVersion     = flag.Bool("version", false, "print the version and exit")
	)
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	opts := backingOptions{access: *backingAccess, dir: *backingDir, hostRoot: *hostRoot, kubeconfig: *kubeconfig,
		driverName: *driverName, runDir: *runDir, mode: *mode, nodeID: *nodeID, nodeName: *nodeName, holderImage: *holderImage,
		kubeletDir: *kubeletDir, holderIdle: *holderIdle}
	locator, err := backingLocator(opts)
	if err == nil {
		err = run(locator, *endpoint, *driverName, *nodeID, *mode, *runDir, *attachMode, *agentSocket, *maxChain,
			*maxVolumes, *registrationDir, *kubeletCSIPath)
	}
	if err != nil {
		klog.ErrorS(err, "pvpool-csi failed")
		klog.Flush()
		os.Exit(1)
	}
}

// hold is the process of holder pods (see pvcsi.BackingPods): it keeps the pod, and so kubelet's mount of the
// backing claim, alive, and ends at once on SIGTERM so that deleting a holder does not wait for its grace period.
func hold() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
}

type backingOptions struct {
	access, dir, hostRoot, kubeconfig, driverName, runDir, mode, nodeID, nodeName, holderImage, kubeletDir string
	holderIdle                                                                                             time.Duration
}

// backingLocator builds the locator --backing-access asks for. Pod-based locators also start collecting
// their holder pods (in the background, for the life of the process).
func backingLocator(o backingOptions) (pvcsi.BackingLocator, error) {
	if o.dir != "" {
		if err := os.MkdirAll(o.dir, 0o755); err != nil {
			return nil, err
		}
	}
	if o.access == "dir" {
		if o.dir == "" {
			return nil, fmt.Errorf("--backing-dir is required with --backing-access=dir")
		}
		return pvcsi.DirLocator{Dir: o.dir}, nil
	}
	if o.access != "path" && o.access != "pods" {
		return nil, fmt.Errorf("--backing-access must be dir, path or pods, not %q", o.access)
	}
	var cfg *rest.Config
	var err error
	if o.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
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
	// Controller and node services on one host share the run directory: each keeps its own cache.
	cacheFile := filepath.Join(o.runDir, "backing-claims-"+o.mode+".json")
	if o.access == "path" {
		return &pvcsi.ClaimLocator{Client: client, HostRoot: o.hostRoot, DriverName: o.driverName, Fallback: o.dir,
			CacheFile: cacheFile}, nil
	}
	if o.nodeName == "" || o.holderImage == "" {
		return nil, fmt.Errorf("--backing-access=pods needs --node-name (or $NODE_NAME) and --holder-image")
	}
	pods := &pvcsi.BackingPods{Client: client, DriverName: o.driverName, NodeName: o.nodeName, Component: o.mode,
		Image: o.holderImage, KubeletDir: o.kubeletDir, HostRoot: o.hostRoot, Fallback: o.dir, CacheFile: cacheFile,
		IdleTimeout: o.holderIdle}
	if o.mode == "node" || o.mode == "all" {
		pods.StageNodeID = o.nodeID
		if pods.StageNodeID == "" {
			if pods.StageNodeID, err = os.Hostname(); err != nil {
				return nil, err
			}
		}
	}
	return pods, nil
}

func run(locator pvcsi.BackingLocator, endpoint, driverName, nodeID, mode, runDir, attachMode, agentSocket string, maxChain int,
	maxVolumes int64, registrationDir, kubeletCSIPath string) error {
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
	if holders, ok := locator.(*pvcsi.BackingPods); ok {
		go holders.Run(ctx)
	}
	if cfg.Node && registrationDir != "" {
		csiPath := kubeletCSIPath
		if csiPath == "" {
			csiPath = endpoint
		}
		// kubelet wants a plain path.
		csiPath = strings.TrimPrefix(csiPath, "unix://")
		reg := &pvcsi.Registrar{DriverName: driverName, Endpoint: csiPath,
			Socket: filepath.Join(registrationDir, driverName+"-reg.sock"), OnFailure: func(error) { stop() }}
		go func() {
			if err := reg.Serve(ctx); err != nil {
				klog.ErrorS(err, "Kubelet registration socket failed")
				stop()
			}
		}()
	}
	return driver.Serve(ctx, endpoint)
}
