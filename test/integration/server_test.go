package integration

import (
	"context"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pvpool/pvpool/pkg/apiserver"
	"github.com/pvpool/pvpool/pkg/cmd/server"
	poolcontroller "github.com/pvpool/pvpool/pkg/controller/pool"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
)

// testServer is a pvpool-apiserver running in this process on an embedded etcd, with delegated
// authentication and authorization switched off: what is tested here is the API itself.
type testServer struct {
	config *rest.Config
	client clientset.Interface
}

func startServer(t *testing.T, authz authorizer.Authorizer) *testServer {
	return startServerWithKube(t, authz, nil)
}

// startServerWithKube starts the server with its handout and controllers acting on kube, a fake
// Kubernetes clientset standing in for kube-apiserver (nil: no handout, checkouts are only stored).
func startServerWithKube(t *testing.T, authz authorizer.Authorizer, kube kubernetes.Interface) *testServer {
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
	// The loopback client authenticates with its token (added by Complete because an authenticator is
	// set); everyone else is anonymous-less and rejected. Authorization is the test's.
	config.GenericConfig.Authentication.Authenticator = authenticator.RequestFunc(func(*http.Request) (*authenticator.Response, bool, error) {
		return nil, false, nil
	})
	config.GenericConfig.Authorization.Authorizer = authz
	if kube != nil {
		config.ExtraConfig.Controllers = apiserver.ControllerConfig{
			KubeClient:    kube,
			KubeInformers: informers.NewSharedInformerFactory(kube, 0),
			Pool:          poolcontroller.Options{BinderImage: "busybox:stable-musl"},
		}
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

// usePermissions authorizes everything for system:masters, and everything but the `use` verb for
// other users; `use` is allowed on the pools listed for the user, as "namespace/name".
type usePermissions map[string][]string

func (p usePermissions) Authorize(ctx context.Context, attrs authorizer.Attributes) (authorizer.Decision, string, error) {
	for _, group := range attrs.GetUser().GetGroups() {
		if group == "system:masters" {
			return authorizer.DecisionAllow, "", nil
		}
	}
	if attrs.GetVerb() != "use" {
		return authorizer.DecisionAllow, "", nil
	}
	if attrs.GetAPIGroup() == "pvpool.puppet.com" && attrs.GetResource() == "pools" {
		for _, pool := range p[attrs.GetUser().GetName()] {
			if pool == attrs.GetNamespace()+"/"+attrs.GetName() {
				return authorizer.DecisionAllow, "", nil
			}
		}
	}
	return authorizer.DecisionNoOpinion, "no RBAC rule allows it", nil
}

// clientAs is a clientset for user, impersonated by the loopback client.
func (s *testServer) clientAs(t *testing.T, user string) clientset.Interface {
	t.Helper()
	config := rest.CopyConfig(s.config)
	config.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	client, err := clientset.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func (p usePermissions) ConditionsAwareAuthorize(ctx context.Context, attrs authorizer.Attributes) authorizer.ConditionsAwareDecision {
	return authorizer.ConditionsAwareDecisionFromParts(p.Authorize(ctx, attrs))
}

func (p usePermissions) EvaluateConditions(context.Context, authorizer.ConditionsAwareDecision, authorizer.ConditionsData) (authorizer.Decision, string, error) {
	return authorizer.DecisionDeny, "", authorizer.ErrorConditionEvaluationNotSupported
}
