package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	clientset "github.com/pvpool/pvpool/pkg/generated/clientset/versioned"
	"github.com/pvpool/pvpool/pkg/replica"
)

// storageClass is the class pools are made of: the local cluster's `local-path`, served by pvpool-csi.
var storageClass = envOr("PVPOOL_E2E_STORAGE_CLASS", "local-path")

// pvpoolCluster is a cluster with pvpool deployed, reached through kube-apiserver's aggregation layer.
type pvpoolCluster struct {
	*cluster
	config *rest.Config
	pvpool clientset.Interface
}

func requirePVPool(t *testing.T) *pvpoolCluster {
	t.Helper()
	c := requireCluster(t)
	requireAggregatedAPI(t, c)
	config, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	config.QPS, config.Burst = 200, 400
	client, err := clientset.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	return &pvpoolCluster{cluster: c, config: config, pvpool: client}
}

// as returns clients impersonating user, who gets nothing but what RBAC grants them.
func (c *pvpoolCluster) as(t *testing.T, user string) (clientset.Interface, kubernetes.Interface) {
	t.Helper()
	config := rest.CopyConfig(c.config)
	config.Impersonate = rest.ImpersonationConfig{UserName: user}
	pvpool, err := clientset.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	return pvpool, kube
}

func poolSpec(name string, replicas int32) *v1alpha1.Pool {
	labels := map[string]string{"e2e.pvpool.puppet.com/pool": name}
	class := storageClass
	return &v1alpha1.Pool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.PoolSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1alpha1.PersistentVolumeClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PersistentVolumeClaimSpec{
					StorageClassName: &class,
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")},
					},
				},
			},
		},
	}
}

func (c *pvpoolCluster) createPool(t *testing.T, ns string, pool *v1alpha1.Pool) *v1alpha1.Pool {
	t.Helper()
	created, err := c.pvpool.PvpoolV1alpha1().Pools(ns).Create(context.Background(), pool, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pool %s/%s: %v", ns, pool.Name, err)
	}
	return created
}

func (c *pvpoolCluster) scalePool(t *testing.T, ns, name string, replicas int32) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := c.pvpool.PvpoolV1alpha1().Pools(ns).Patch(context.Background(), name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func poll(t *testing.T, timeout time.Duration, what string, condition func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, timeout, true, condition); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// waitPool waits until the pool reports replicas and availableReplicas for its current generation.
func (c *pvpoolCluster) waitPool(t *testing.T, ns, name string, available int32) *v1alpha1.Pool {
	t.Helper()
	var pool *v1alpha1.Pool
	poll(t, 4*time.Minute, fmt.Sprintf("pool %s/%s to have %d available replicas", ns, name, available), func(ctx context.Context) (bool, error) {
		var err error
		pool, err = c.pvpool.PvpoolV1alpha1().Pools(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return pool.Status.ObservedGeneration == pool.Generation && pool.Status.AvailableReplicas == available &&
			len(c.replicas(t, pool)) == int(available), nil
	})
	return pool
}

// replicas lists the claims pool owns and has not handed out.
func (c *pvpoolCluster) replicas(t *testing.T, pool *v1alpha1.Pool) []corev1.PersistentVolumeClaim {
	t.Helper()
	list, err := c.client.CoreV1().PersistentVolumeClaims(pool.Namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var owned []corev1.PersistentVolumeClaim
	for _, claim := range list.Items {
		if replica.OwnedBy(pool, &claim) && !replica.IsTaken(&claim) && claim.DeletionTimestamp == nil {
			owned = append(owned, claim)
		}
	}
	return owned
}

func checkoutSpec(name, poolNamespace, poolName string) *v1alpha1.Checkout {
	return &v1alpha1.Checkout{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.CheckoutSpec{PoolRef: v1alpha1.PoolReference{Namespace: poolNamespace, Name: poolName}},
	}
}

func acquired(checkout *v1alpha1.Checkout) (reason string, ok bool) {
	for _, condition := range checkout.Status.Conditions {
		if condition.Type == v1alpha1.CheckoutAcquired {
			return condition.Reason, condition.Status == corev1.ConditionTrue
		}
	}
	return "", false
}

func (c *pvpoolCluster) waitAcquired(t *testing.T, ns, name string) *v1alpha1.Checkout {
	t.Helper()
	var checkout *v1alpha1.Checkout
	poll(t, 4*time.Minute, "checkout "+ns+"/"+name+" to acquire a volume", func(ctx context.Context) (bool, error) {
		var err error
		checkout, err = c.pvpool.PvpoolV1alpha1().Checkouts(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		_, ok := acquired(checkout)
		return ok, nil
	})
	return checkout
}

// expectBoundNow asserts the checkout's claim is Bound to its volume right now, without waiting.
func (c *pvpoolCluster) expectBoundNow(t *testing.T, checkout *v1alpha1.Checkout) *corev1.PersistentVolumeClaim {
	t.Helper()
	if reason, ok := acquired(checkout); !ok {
		t.Fatalf("checkout %s/%s not acquired (%s): %+v", checkout.Namespace, checkout.Name, reason, checkout.Status)
	}
	claim, err := c.client.CoreV1().PersistentVolumeClaims(checkout.Namespace).Get(context.Background(), checkout.Status.VolumeClaimRef.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if claim.Status.Phase != corev1.ClaimBound || claim.Spec.VolumeName != checkout.Status.VolumeName {
		t.Fatalf("claim %s/%s is %s on %q right after the checkout, want Bound on %s", claim.Namespace, claim.Name, claim.Status.Phase, claim.Spec.VolumeName, checkout.Status.VolumeName)
	}
	return claim
}

// runPod runs a pod with claim mounted at /workspace (or, for a Block claim, at /dev/xvda) and returns
// its termination message: what the command wrote to /dev/termination-log.
func (c *pvpoolCluster) runPod(t *testing.T, ns, claim string, block bool, script string) string {
	t.Helper()
	container := corev1.Container{
		Name:                     "main",
		Image:                    "busybox:stable-musl",
		Command:                  []string{"/bin/sh", "-c", script},
		TerminationMessagePolicy: corev1.TerminationMessageReadFile,
	}
	if block {
		container.VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/dev/xvda"}}
	} else {
		container.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/workspace"}}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{container},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
	created, err := c.client.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var done *corev1.Pod
	poll(t, 4*time.Minute, "pod "+created.Name+" to finish", func(ctx context.Context) (bool, error) {
		done, err = c.client.CoreV1().Pods(ns).Get(ctx, created.Name, metav1.GetOptions{})
		return err == nil && (done.Status.Phase == corev1.PodSucceeded || done.Status.Phase == corev1.PodFailed), nil
	})
	message := ""
	for _, status := range done.Status.ContainerStatuses {
		if status.State.Terminated != nil {
			message = status.State.Terminated.Message
		}
	}
	if done.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod %s failed: %s", created.Name, message)
	}
	_ = c.client.CoreV1().Pods(ns).Delete(context.Background(), created.Name, metav1.DeleteOptions{})
	return strings.TrimSpace(message)
}

// grantUse binds user to checkouts in ns and to `use` on the pools named (resourceNames) in poolNS.
func (c *pvpoolCluster) grantUse(t *testing.T, user, ns, poolNS string, pools ...string) {
	t.Helper()
	names := ""
	if len(pools) > 0 {
		names = "  resourceNames: [" + strings.Join(pools, ", ") + "]\n"
	}
	c.kubectlOK(t, fmt.Sprintf(`
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: checkout-owner-%[2]s, namespace: %[1]s}
rules:
- apiGroups: [pvpool.puppet.com]
  resources: [checkouts]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: checkout-owner-%[2]s, namespace: %[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: checkout-owner-%[2]s}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: %[2]s}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pool-user-%[2]s, namespace: %[3]s}
rules:
- apiGroups: [pvpool.puppet.com]
  resources: [pools]
%[4]s  verbs: [use]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: pool-user-%[2]s, namespace: %[3]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pool-user-%[2]s}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: %[2]s}]
`, ns, user, poolNS, names), "apply", "-f", "-")
}

// createCheckoutEventually retries while RBAC bindings reach the delegated authorizer's cache.
func createCheckoutEventually(t *testing.T, client clientset.Interface, ns string, checkout *v1alpha1.Checkout) *v1alpha1.Checkout {
	t.Helper()
	var created *v1alpha1.Checkout
	var err error
	_ = wait.PollUntilContextTimeout(context.Background(), time.Second, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		created, err = client.PvpoolV1alpha1().Checkouts(ns).Create(ctx, checkout, metav1.CreateOptions{})
		return err == nil || !apierrors.IsForbidden(err), nil
	})
	if err != nil {
		t.Fatalf("creating checkout %s/%s: %v", ns, checkout.Name, err)
	}
	return created
}

func decodeYAML(t *testing.T, text string, into interface{}) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(text), into); err != nil {
		t.Fatal(err)
	}
}

// kubectlStderr runs kubectl, which must succeed, and returns what it printed on stderr (warnings).
func (c *pvpoolCluster) kubectlStderr(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(c.kubectl, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stderr = strings.NewReader(stdin), &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stderr.String()
}
