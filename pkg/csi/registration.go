package csi

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Registrar registers the node plugin with kubelet's plugin watcher, as node-driver-registrar would:
// kubelet finds a socket in its plugins_registry directory, asks it for the plugin's name and CSI
// endpoint, and reports whether registration succeeded.
type Registrar struct {
	registerapi.UnimplementedRegistrationServer

	DriverName string
	// Endpoint is the CSI socket path as kubelet sees it on the host.
	Endpoint string
	// Socket is the registration socket, normally
	// /var/lib/kubelet/plugins_registry/<driver>-reg.sock.
	Socket string
	// OnFailure is called when kubelet reports a failed registration.
	OnFailure func(error)
}

// GetInfo implements registerapi.RegistrationServer.
func (r *Registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.DriverName, Endpoint: r.Endpoint,
		SupportedVersions: []string{"1.0.0"}}, nil
}

// NotifyRegistrationStatus implements registerapi.RegistrationServer.
func (r *Registrar) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if st.GetPluginRegistered() {
		klog.InfoS("Registered with kubelet", "driver", r.DriverName, "endpoint", r.Endpoint)
	} else {
		err := errors.New(st.GetError())
		klog.ErrorS(err, "Kubelet refused the registration", "driver", r.DriverName)
		if r.OnFailure != nil {
			r.OnFailure(err)
		}
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Serve serves the registration socket until ctx ends, then removes it (kubelet then deregisters).
func (r *Registrar) Serve(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(r.Socket), 0o755); err != nil {
		return err
	}
	if err := os.Remove(r.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	lis, err := net.Listen("unix", r.Socket)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, r)
	go func() {
		<-ctx.Done()
		srv.Stop()
		_ = os.Remove(r.Socket)
	}()
	klog.InfoS("Serving kubelet plugin registration", "socket", r.Socket)
	return srv.Serve(lis)
}
