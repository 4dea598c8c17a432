package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

func TestNodeReady(t *testing.T) {
	c := requireCluster(t)
	node, err := c.client.CoreV1().Nodes().Get(context.Background(), c.nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting node %s: %v", c.nodeName, err)
	}
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status != corev1.ConditionTrue {
				t.Fatalf("node %s Ready=%s: %s", c.nodeName, cond.Status, cond.Message)
			}
			return
		}
	}
	t.Fatalf("node %s has no Ready condition", c.nodeName)
}

// TestJobWritesToLocalPersistentVolume runs the locally built busybox image in a Job whose pod mounts a
// local PersistentVolume through a bound claim, and checks the file it wrote on the host.
func TestJobWritesToLocalPersistentVolume(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	// The volume directory must outlive the pod's unmount: registered first, removed last.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	ns := c.namespace(t, "e2e-local-pv")
	pvName := "e2e-local-pv-" + randomSuffix(t)
	filesystem := corev1.PersistentVolumeFilesystem
	_, err := c.client.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			VolumeMode:                    &filesystem,
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: "data"},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				Local: &corev1.LocalVolumeSource{Path: dir},
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{c.nodeName},
				}}}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating PV: %v", err)
	}
	t.Cleanup(func() {
		if err := c.client.CoreV1().PersistentVolumes().Delete(context.Background(), pvName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting PV %s: %v", pvName, err)
		}
	})
	empty := ""
	_, err = c.client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &empty,
			VolumeName:       pvName,
			VolumeMode:       &filesystem,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating PVC: %v", err)
	}

	token := randomSuffix(t)
	backoff := int32(0)
	_, err = c.client.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "writer"},
		Spec: batchv1.JobSpec{
			BackoffLimit: &backoff,
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{
					Name:         "writer",
					Image:        "busybox:stable-musl",
					Command:      []string{"/bin/sh", "-c", `echo "$TOKEN" >/data/out.txt`},
					Env:          []corev1.EnvVar{{Name: "TOKEN", Value: token}},
					VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
				}},
				Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
					PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"},
				}}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Job: %v", err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		job, err := c.client.BatchV1().Jobs(ns).Get(ctx, "writer", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range job.Status.Conditions {
			if cond.Status != corev1.ConditionTrue {
				continue
			}
			switch cond.Type {
			case batchv1.JobComplete:
				return true, nil
			case batchv1.JobFailed:
				return false, fmt.Errorf("job failed: %s", cond.Message)
			}
		}
		return false, nil
	})
	if err != nil {
		out, _ := c.kubectlRun(t, "", "-n", ns, "describe", "pods")
		t.Fatalf("waiting for Job writer to complete: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out.txt"))
	if err != nil {
		t.Fatalf("reading what the Job wrote: %v", err)
	}
	if strings.TrimSpace(string(got)) != token {
		t.Fatalf("the Job wrote %q to the volume, want %q", got, token)
	}
}

// requireAggregatedAPI skips while pvpool-apiserver is not registered (up.sh registers it once
// bin/pvpool-apiserver exists) and fails if it is registered but not Available.
func requireAggregatedAPI(t *testing.T, c *cluster) {
	t.Helper()
	out, err := c.kubectlRun(t, "", "get", "apiservice", "v1alpha1.pvpool.puppet.com", "-o",
		`jsonpath={.status.conditions[?(@.type=="Available")].status}`)
	if err != nil {
		if strings.Contains(err.Error(), "NotFound") {
			t.Fatal("APIService v1alpha1.pvpool.puppet.com is not registered: make up did not deploy pvpool-apiserver")
		}
		t.Fatal(err)
	}
	if out != "True" {
		t.Fatalf("APIService v1alpha1.pvpool.puppet.com Available=%q", out)
	}
}

func TestAggregatedAPIDiscovery(t *testing.T) {
	c := requireCluster(t)
	requireAggregatedAPI(t, c)
	out := c.kubectlOK(t, "", "get", "--raw", "/apis/pvpool.puppet.com/v1alpha1")
	var list metav1.APIResourceList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("decoding discovery document: %v\n%s", err, out)
	}
	if list.GroupVersion != "pvpool.puppet.com/v1alpha1" {
		t.Fatalf("groupVersion %q, want pvpool.puppet.com/v1alpha1", list.GroupVersion)
	}
	served := map[string]bool{}
	for _, r := range list.APIResources {
		served[r.Name] = true
	}
	for _, want := range []string{"pools", "pools/status", "checkouts", "checkouts/status"} {
		if !served[want] {
			t.Errorf("discovery lacks %s; serves %v", want, served)
		}
	}
}

// TestPoolThroughAggregationAsNonAdmin creates and lists a Pool with kubectl as a user who holds only a
// namespaced Role, so authentication and authorization go through kube-apiserver's aggregation layer
// to pvpool-apiserver's delegated authorizer.
func TestPoolThroughAggregationAsNonAdmin(t *testing.T) {
	c := requireCluster(t)
	requireAggregatedAPI(t, c)
	ns := c.namespace(t, "e2e-pool")
	user := "e2e-pool-user-" + randomSuffix(t)
	c.kubectlOK(t, fmt.Sprintf(`
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pool-editor
  namespace: %[1]s
rules:
- apiGroups: ["pvpool.puppet.com"]
  resources: ["pools"]
  verbs: ["create", "get", "list", "watch", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: pool-editor
  namespace: %[1]s
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: pool-editor
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: %[2]s
`, ns, user), "apply", "-f", "-")

	// The seed's Pool example, unmodified but for its name.
	const pool = `
apiVersion: pvpool.puppet.com/v1alpha1
kind: Pool
metadata:
  name: e2e-pool
spec:
  replicas: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: e2e-pool
  template:
    metadata:
      labels:
        app.kubernetes.io/name: e2e-pool
    spec:
      storageClassName: local-path
      resources:
        requests:
          storage: 50Mi
`
	// RBAC bindings take effect asynchronously in the delegated authorizer's cache.
	var createErr error
	_ = wait.PollUntilContextTimeout(context.Background(), time.Second, 30*time.Second, true, func(context.Context) (bool, error) {
		_, createErr = c.kubectlRun(t, pool, "--as", user, "-n", ns, "create", "-f", "-")
		return createErr == nil, nil
	})
	if createErr != nil {
		t.Fatalf("creating a Pool as %s: %v", user, createErr)
	}
	out := c.kubectlOK(t, "", "--as", user, "-n", ns, "get", "pools", "-o", "name")
	if strings.TrimSpace(out) != "pool.pvpool.puppet.com/e2e-pool" {
		t.Fatalf("kubectl get pools as %s: %q, want pool.pvpool.puppet.com/e2e-pool", user, out)
	}

	// Someone without the Role is refused by the aggregated server.
	_, err := c.kubectlRun(t, "", "--as", "e2e-outsider-"+randomSuffix(t), "-n", ns, "get", "pools")
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("listing pools without a Role: want Forbidden, got %v", err)
	}
	c.kubectlOK(t, "", "--as", user, "-n", ns, "delete", "pool", "e2e-pool", "--wait=false")
}
