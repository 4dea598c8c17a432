package csi

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/pvpool/pvpool/pkg/volume"
)

// recover reloads the volumes this node staged before the plugin restarted. Daemons and nbdfuse bridges
// run in their own sessions, so after a plain process restart they still serve and are adopted. If they
// died (the container was restarted), the daemon is started again, a new device attached and the
// staging and publish mounts rebound to it; pods that opened the old device must be restarted then.
func (n *nodeState) recover(ctx context.Context) error {
	entries, err := os.ReadDir(filepath.Join(n.cfg.RunDir, "volumes"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(n.cfg.RunDir, "volumes", e.Name(), "state.json")
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var v nodeVolume
		if err := json.Unmarshal(raw, &v); err != nil {
			errs = append(errs, err)
			continue
		}
		if v.Targets == nil {
			v.Targets = map[string]bool{}
		}
		if err := n.recoverVolume(ctx, &v); err != nil {
			klog.ErrorS(err, "Recovering staged volume failed", "volumeID", v.VolumeID)
			errs = append(errs, err)
		}
		// Keep the volume known even on failure so NodeUnstage can clean it up.
		n.mu.Lock()
		n.volumes[v.VolumeID] = &v
		n.mu.Unlock()
	}
	return errors.Join(errs...)
}

func (n *nodeState) recoverVolume(ctx context.Context, v *nodeVolume) error {
	dir := n.volumeDir(v.VolumeID)
	cfg := volume.DaemonConfig{Dir: dir, Image: v.Image, ReadOnly: v.ReadOnly}
	if d, err := volume.AdoptDaemon(ctx, cfg); err == nil {
		v.daemon = d
		if top, err := d.TopImage(ctx); err == nil && top != v.Image && v.Scratch == "" {
			// A live snapshot finished after the state was last written.
			v.Image = top
		}
		if v.Device.Healthy() {
			klog.InfoS("Adopted staged volume", "volumeID", v.VolumeID, "device", v.Device.Path, "daemonPID", d.PID())
			return n.save(v)
		}
	} else {
		klog.InfoS("Daemon of staged volume is gone; restarting it", "volumeID", v.VolumeID, "reason", err.Error())
		if !v.ReadOnly {
			_, _ = volume.Check(ctx, v.Image, true)
		}
		if cfg, err = n.daemonConfig(ctx, v); err != nil {
			return err
		}
		d, err := volume.StartDaemon(ctx, cfg)
		if err != nil {
			return err
		}
		v.daemon = d
	}
	// The old device is dead: its bridge died with the daemon or cannot reconnect to a new one.
	old := v.Device
	_ = old.Detach(ctx)
	dev, err := volume.Attach(ctx, volume.AttachConfig{Mode: n.cfg.AttachMode, NBDSocket: cfg.NBDSocket(), WorkDir: dir,
		ReadOnly: v.ReadOnly && v.Scratch == ""})
	if err != nil {
		return err
	}
	v.Device = *dev
	if v.Filesystem {
		_ = mount.CleanupMountPoint(v.StagingPath, n.mounter, true)
		if err := n.mountStaging(ctx, v); err != nil {
			return err
		}
	}
	for target, ro := range v.Targets {
		_ = n.mounter.Unmount(target)
		source := v.StagingPath
		if !v.Filesystem {
			source = v.Device.Path
			if err := makeFile(target); err != nil {
				return err
			}
		}
		opts := []string{"bind"}
		if ro {
			opts = append(opts, "ro")
		}
		if err := n.mounter.Mount(source, target, "", opts); err != nil {
			return err
		}
	}
	klog.InfoS("Restarted staged volume", "volumeID", v.VolumeID, "oldDevice", old.Path, "device", v.Device.Path)
	return n.save(v)
}
