package csi

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestRegistrar plays kubelet's plugin watcher against the registration socket.
func TestRegistrar(t *testing.T) {
	dir := t.TempDir()
	failed := make(chan error, 1)
	r := &Registrar{DriverName: DefaultDriverName, Endpoint: "/var/lib/kubelet/plugins/x/csi.sock",
		Socket: filepath.Join(dir, DefaultDriverName+"-reg.sock"), OnFailure: func(err error) { failed <- err }}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	conn, err := grpc.NewClient("unix://"+r.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			for {
				c, err := d.DialContext(ctx, "unix", r.Socket)
				if err == nil || ctx.Err() != nil {
					return c, err
				}
				time.Sleep(10 * time.Millisecond)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := registerapi.NewRegistrationClient(conn)
	info, err := client.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != DefaultDriverName || info.Endpoint != r.Endpoint || len(info.SupportedVersions) == 0 {
		t.Errorf("info = %+v", info)
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version mismatch"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-failed:
		if err.Error() != "version mismatch" {
			t.Errorf("failure = %v", err)
		}
	default:
		t.Error("a refused registration was not reported")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("registration server did not stop")
	}
}
