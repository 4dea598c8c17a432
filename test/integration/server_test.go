package integration

import (
	"context"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"

	"github.com/pvpool/pvpool/pkg/cmd/server"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
)

// testServer is a pvpool-apiserver running in this process on an embedded etcd, with delegated
// authentication and authorization switched off: what is tested here is the API itself.
type testServer struct {
	config *rest.Config
	client clientset.Interface
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())

	options := server.NewOptions(os.Stdout, os.Stderr)
	if err := options.ComponentGlobalsRegistry.Set(); err != nil {
		t.Fatal(err)
	}
	options.RecommendedOptions.Authentication = nil
	options.RecommendedOptions.Authorization = nil
	options.RecommendedOptions.CoreAPI = nil
	options.RecommendedOptions.Admission = nil
	// Priority and fairness reads its configuration from kube-apiserver, which is not here.
	options.RecommendedOptions.Features.EnablePriorityAndFairness = false
	options.DataDir = t.TempDir()
	options.RecommendedOptions.SecureServing.ServerCert.CertDirectory = t.TempDir()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	options.RecommendedOptions.SecureServing.Listener = listener
	options.RecommendedOptions.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	if err := options.Validate(nil); err != nil {
		t.Fatal(err)
	}

	config, stopEtcd, err := options.Config(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	srv, err := config.Complete().New()
	if err != nil {
		cancel()
		stopEtcd()
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-stopped:
			if err != nil {
				t.Errorf("server stopped with an error: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("server did not stop within a minute")
		}
		stopEtcd()
	})

	clientConfig := rest.CopyConfig(config.GenericConfig.LoopbackClientConfig)
	client, err := clientset.NewForConfig(clientConfig)
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		status := 0
		client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		return status == 200, nil
	})
	if err != nil {
		t.Fatalf("server never became ready on port %s: %v", strconv.Itoa(options.RecommendedOptions.SecureServing.BindPort), err)
	}
	return &testServer{config: clientConfig, client: client}
}
