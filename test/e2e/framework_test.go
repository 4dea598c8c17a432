package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The suite runs against the cluster of hack/cluster/up.sh. hack/e2e.sh brings it up and sets the
// environment; a plain `go test ./...` skips.
const enableEnv = "PVPOOL_E2E"

type cluster struct {
	kubeconfig string
	kubectl    string
	stateDir   string
	nodeName   string
	client     kubernetes.Interface
}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the repository root")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// requireCluster skips unless the e2e environment is enabled, and fails if it is enabled but the
// cluster is unreachable.
func requireCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Getenv(enableEnv) != "1" {
		t.Skipf("e2e tests need the local cluster: run hack/e2e.sh (or make test-e2e), or set %s=1 with a cluster from make up", enableEnv)
	}
	stateDir := envOr("PVPOOL_CLUSTER_DIR", filepath.Join(repoRoot(t), "_output", "cluster"))
	c := &cluster{
		kubeconfig: envOr("PVPOOL_E2E_KUBECONFIG", filepath.Join(stateDir, "kubeconfig", "admin.kubeconfig")),
		kubectl:    envOr("PVPOOL_E2E_KUBECTL", "kubectl"),
		stateDir:   stateDir,
		nodeName:   envOr("PVPOOL_NODE_NAME", "pvpool-node"),
	}
	config, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatalf("loading kubeconfig %s: %v", c.kubeconfig, err)
	}
	c.client, err = kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatalf("creating client: %v", err)
	}
	return c
}

// kubectl runs kubectl against the cluster with the given stdin and returns stdout; stderr is part of
// the error.
func (c *cluster) kubectlRun(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.kubectl, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func (c *cluster) kubectlOK(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := c.kubectlRun(t, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func randomSuffix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// namespace creates a fresh namespace deleted (and waited for) when the test ends.
func (c *cluster) namespace(t *testing.T, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := c.client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", ns.Name, err)
			return
		}
		err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := c.client.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			// The namespace controller says why (e.g. an aggregated API it cannot list or delete from).
			var reasons []string
			if left, getErr := c.client.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{}); getErr == nil {
				for _, cond := range left.Status.Conditions {
					if cond.Status == corev1.ConditionTrue {
						reasons = append(reasons, fmt.Sprintf("%s: %s", cond.Type, cond.Message))
					}
				}
			}
			t.Errorf("namespace %s still exists after 2 minutes: %s", ns.Name, strings.Join(reasons, "; "))
		}
	})
	return ns.Name
}
