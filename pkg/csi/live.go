package csi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/pvpool/pvpool/pkg/volume"
)

// liveFreezer routes a live snapshot to the node serving the volume: in-process when that is this
// plugin, otherwise through the node's agent socket.
type liveFreezer struct {
	nodeID string
	local  *nodeState
}

type freezeRequest struct {
	VolumeID    string `json:"volumeID"`
	NewHeadName string `json:"newHeadName"`
}

func (l *liveFreezer) Freeze(ctx context.Context, st stageRecord, volumeID, newHeadName string) error {
	if l.local != nil && st.NodeID == l.nodeID {
		return l.local.freeze(ctx, volumeID, newHeadName)
	}
	if st.AgentSocket == "" {
		return fmt.Errorf("node %s has no agent socket", st.NodeID)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", st.AgentSocket)
	}}}
	body, _ := json.Marshal(freezeRequest{VolumeID: volumeID, NewHeadName: newHeadName})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/freeze", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("node %s agent: %w", st.NodeID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("node %s agent: %s: %s", st.NodeID, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// freeze switches the daemon serving volumeID to the overlay newHeadName. Idempotent: a retry after the
// switch happened finds the overlay already on top.
func (n *nodeState) freeze(ctx context.Context, volumeID, newHeadName string) error {
	v := n.get(volumeID)
	if v == nil {
		return fmt.Errorf("volume %s is not staged on this node", volumeID)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if v.daemon == nil {
		return errors.New("the volume's daemon is not running")
	}
	newHead := filepath.Join(v.ImagesDir, filepath.Base(newHeadName))
	top, err := v.daemon.TopImage(ctx)
	if err != nil {
		return err
	}
	if top == newHead {
		return nil
	}
	backing, err := volume.BackingOf(newHead)
	if err != nil {
		return err
	}
	if filepath.Clean(backing) != filepath.Clean(top) {
		return fmt.Errorf("overlay %s is based on %s but the daemon serves %s", newHead, backing, top)
	}
	if err := v.daemon.Snapshot(ctx, newHead); err != nil {
		return err
	}
	v.Image = newHead
	if err := writeJSONAtomic(filepath.Join(n.volumeDir(volumeID), "state.json"), v); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("Live snapshot", "volumeID", volumeID, "frozen", top, "head", newHead)
	return nil
}

// serveAgent accepts live-snapshot requests from controllers on a unix socket.
func (n *nodeState) serveAgent(ctx context.Context, socket string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, err
	}
	_ = os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/freeze", func(w http.ResponseWriter, r *http.Request) {
		var req freezeRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := n.freeze(r.Context(), req.VolumeID, req.NewHeadName); err != nil {
			klog.ErrorS(err, "Live snapshot failed", "volumeID", req.VolumeID)
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	klog.InfoS("Serving node agent", "socket", socket)
	return func() {
		_ = srv.Close()
		_ = os.Remove(socket)
	}, nil
}
