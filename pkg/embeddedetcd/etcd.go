// Package embeddedetcd runs a single-member etcd inside the API server process, the storage of a
// single-replica pvpool-apiserver that was given no --etcd-servers.
package embeddedetcd

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/klog/v2"
)

// Server is a running embedded etcd member.
type Server struct {
	etcd      *embed.Etcd
	clientURL string
}

// Start runs an etcd member storing its data in dataDir, listening for clients and peers on
// loopback ports chosen by the kernel, and waits until it serves.
func Start(ctx context.Context, dataDir string) (*Server, error) {
	loopback := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg := embed.NewConfig()
	cfg.Name = "pvpool-apiserver"
	cfg.Dir = dataDir
	cfg.ListenClientUrls = []url.URL{loopback}
	cfg.AdvertiseClientUrls = []url.URL{loopback}
	cfg.ListenPeerUrls = []url.URL{loopback}
	cfg.AdvertisePeerUrls = []url.URL{loopback}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	// Metrics of the member are served by the API server's own /metrics; no extra listener.
	cfg.ListenMetricsUrls = nil

	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd in %s: %w", dataDir, err)
	}
	select {
	case <-etcd.Server.ReadyNotify():
	case err := <-etcd.Err():
		etcd.Close()
		return nil, fmt.Errorf("embedded etcd in %s failed: %w", dataDir, err)
	case <-time.After(time.Minute):
		etcd.Close()
		return nil, fmt.Errorf("embedded etcd in %s did not become ready within a minute", dataDir)
	case <-ctx.Done():
		etcd.Close()
		return nil, ctx.Err()
	}
	server := &Server{etcd: etcd, clientURL: "http://" + etcd.Clients[0].Addr().String()}
	klog.FromContext(ctx).Info("Embedded etcd is ready", "dataDir", dataDir, "clientURL", server.clientURL)
	return server, nil
}

// ClientURL is where the member serves clients.
func (s *Server) ClientURL() string { return s.clientURL }

// Close stops the member and waits until its data is closed.
func (s *Server) Close() {
	s.etcd.Close()
}
