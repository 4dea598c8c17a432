package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
)

// The PVPool end-to-end scenarios, on the local cluster with real pods and pvpool-csi volumes.

func TestPoolScalesUpAndDown(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-scale")
	c.createPool(t, ns, poolSpec("scaled", 3))
	c.waitPool(t, ns, "scaled", 3)
	c.scalePool(t, ns, "scaled", 1)
	c.waitPool(t, ns, "scaled", 1)
	c.scalePool(t, ns, "scaled", 4)
	pool := c.waitPool(t, ns, "scaled", 4)
	for _, condition := range pool.Status.Conditions {
		if condition.Type == v1alpha1.PoolAvailable && (condition.Status != corev1.ConditionTrue || condition.Reason != "MinimumReplicasAvailable") {
			t.Errorf("Available condition %+v", condition)
		}
	}
	c.scalePool(t, ns, "scaled", 0)
	c.waitPool(t, ns, "scaled", 0)
}

func TestPoolReplacesDeletedReplica(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-replace")
	pool := c.waitPool(t, ns, c.createPool(t, ns, poolSpec("replaced", 2)).Name, 2)
	victim := c.replicas(t, pool)[0]
	if err := c.client.CoreV1().PersistentVolumeClaims(ns).Delete(context.Background(), victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 4*time.Minute, "the deleted replica to be replaced", func(ctx context.Context) (bool, error) {
		replicas := c.replicas(t, pool)
		for _, claim := range replicas {
			if claim.UID == victim.UID {
				return false, nil
			}
		}
		current, err := c.pvpool.PvpoolV1alpha1().Pools(ns).Get(ctx, pool.Name, metav1.GetOptions{})
		return err == nil && len(replicas) == 2 && current.Status.AvailableReplicas == 2, nil
	})
}

func TestPoolsWithTheSameSelectorKeepTheirOwnReplicas(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-selector")
	first, second := poolSpec("first", 2), poolSpec("second", 3)
	second.Spec.Selector = first.Spec.Selector
	second.Spec.Template.Labels = first.Spec.Template.Labels
	c.createPool(t, ns, first)
	c.createPool(t, ns, second)
	firstPool := c.waitPool(t, ns, "first", 2)
	secondPool := c.waitPool(t, ns, "second", 3)
	// Stable for a while: neither pool adopts or deletes the other's claims.
	time.Sleep(5 * time.Second)
	if n, m := len(c.replicas(t, firstPool)), len(c.replicas(t, secondPool)); n != 2 || m != 3 {
		t.Errorf("first owns %d replicas, second %d; want 2 and 3", n, m)
	}
}

func TestCheckoutInTheSameNamespaceIsBoundOnReturn(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-same")
	c.createPool(t, ns, poolSpec("workspaces", 2))
	c.waitPool(t, ns, "workspaces", 2)
	out := c.kubectlOK(t, `
apiVersion: pvpool.puppet.com/v1alpha1
kind: Checkout
metadata:
  name: test-checkout-a
spec:
  poolRef:
    name: workspaces
`, "-n", ns, "create", "-f", "-", "-o", "yaml")
	var checkout v1alpha1.Checkout
	decodeYAML(t, out, &checkout)
	claim := c.expectBoundNow(t, &checkout)
	if claim.Name != "test-checkout-a" || !metav1.IsControlledBy(claim, &checkout) {
		t.Errorf("claim %s owned by %v", claim.Name, claim.OwnerReferences)
	}
	got := c.runPod(t, ns, claim.Name, false, "echo hello >/workspace/f && cat /workspace/f >/dev/termination-log")
	if got != "hello" {
		t.Errorf("pod read %q back from the checked-out volume", got)
	}
	table := c.kubectlOK(t, "", "-n", ns, "get", "checkouts")
	if !strings.Contains(table, "ACQUIRED") || !strings.Contains(table, "CheckedOut") || !strings.Contains(table, ns+"/workspaces") {
		t.Errorf("kubectl get checkouts:\n%s", table)
	}
	// The pool refills.
	c.waitPool(t, ns, "workspaces", 2)
}

func TestCheckoutAcrossNamespacesNeedsUse(t *testing.T) {
	c := requirePVPool(t)
	storage := c.namespace(t, "e2e-storage")
	team := c.namespace(t, "e2e-team")
	c.createPool(t, storage, poolSpec("restricted-pool", 1))
	c.createPool(t, storage, poolSpec("other-pool", 1))
	c.waitPool(t, storage, "restricted-pool", 1)

	user := "e2e-user-" + randomSuffix(t)
	c.grantUse(t, user, team, storage, "restricted-pool")
	asUser, _ := c.as(t, user)

	checkout := createCheckoutEventually(t, asUser, team, checkoutSpec("my-checkout", storage, "restricted-pool"))
	c.expectBoundNow(t, checkout)

	_, err := asUser.PvpoolV1alpha1().Checkouts(team).Create(context.Background(), checkoutSpec("other", storage, "other-pool"), metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "other-pool") {
		t.Errorf("checkout of a pool without use: got %v, want 403 naming other-pool", err)
	}
	outsider, _ := c.as(t, "e2e-outsider-"+randomSuffix(t))
	_, err = outsider.PvpoolV1alpha1().Checkouts(team).Create(context.Background(), checkoutSpec("nope", storage, "restricted-pool"), metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("checkout by a user without any role: got %v, want 403", err)
	}
	if _, err := c.pvpool.PvpoolV1alpha1().Checkouts(team).Get(context.Background(), "other", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a forbidden checkout was stored: %v", err)
	}
}

func TestCheckoutsRefillThePool(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-refill")
	c.createPool(t, ns, poolSpec("small", 3))
	c.waitPool(t, ns, "small", 3)
	volumes := map[string]string{}
	for i := 0; i < 5; i++ {
		name := fmt.Sprintf("checkout-%d", i)
		if _, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(context.Background(), checkoutSpec(name, "", "small"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		checkout := c.waitAcquired(t, ns, fmt.Sprintf("checkout-%d", i))
		if holder, taken := volumes[checkout.Status.VolumeName]; taken {
			t.Errorf("volume %s handed to %s and %s", checkout.Status.VolumeName, holder, checkout.Name)
		}
		volumes[checkout.Status.VolumeName] = checkout.Name
	}
	c.waitPool(t, ns, "small", 3)
}

// TestInitJobPrepopulates applies PVPool's README example unmodified.
func TestInitJobPrepopulates(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-init")
	c.kubectlOK(t, "", "-n", ns, "create", "-f", filepath.Join(repoRoot(t), "artifacts", "examples", "pvpool", "pool-with-init-job.yaml"))
	c.waitPool(t, ns, "test-pool-with-init-job", 5)
	jobs, err := c.client.BatchV1().Jobs(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs.Items) != 0 {
		t.Errorf("%d init jobs left after their replicas became available", len(jobs.Items))
	}
	checkout, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(context.Background(), checkoutSpec("test-checkout-a", "", "test-pool-with-init-job"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claim := c.expectBoundNow(t, checkout)
	if got := c.runPod(t, ns, claim.Name, false, "cat /workspace/data.txt >/dev/termination-log"); got != "Wow, such prepopulated!" {
		t.Errorf("the checked-out volume holds %q", got)
	}
}

func TestCheckoutBeforeThePoolExistsAndBeforeItHasReplicas(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-early")
	stderr := c.kubectlStderr(t, `
apiVersion: pvpool.puppet.com/v1alpha1
kind: Checkout
metadata: {name: early}
spec: {poolRef: {name: later}}
`, "-n", ns, "create", "-f", "-")
	if !strings.Contains(stderr, "Warning:") || !strings.Contains(stderr, "PoolDoesNotExist") {
		t.Errorf("kubectl printed no waiting warning; stderr: %q", stderr)
	}
	early, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Get(context.Background(), "early", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := acquired(early); ok || reason != "PoolDoesNotExist" {
		t.Fatalf("checkout before its pool: reason %q", reason)
	}
	c.createPool(t, ns, poolSpec("later", 0))
	waiting, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(context.Background(), checkoutSpec("waiting", "", "later"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := acquired(waiting); ok || reason != "NotAvailable" {
		t.Fatalf("checkout of an empty pool: reason %q", reason)
	}
	c.scalePool(t, ns, "later", 1)
	first := c.waitAcquired(t, ns, "early")
	second := c.waitAcquired(t, ns, "waiting")
	if first.Status.VolumeName == second.Status.VolumeName {
		t.Errorf("both checkouts hold %s", first.Status.VolumeName)
	}
}

func TestClaimNameConflictAndReadOnlyMany(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-claims")
	c.createPool(t, ns, poolSpec("pool", 2))
	c.waitPool(t, ns, "pool", 2)

	named := checkoutSpec("named", "", "pool")
	named.Spec.ClaimName = "my-claim"
	named.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}
	created, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(context.Background(), named, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claim := c.expectBoundNow(t, created)
	if claim.Name != "my-claim" || fmt.Sprint(claim.Spec.AccessModes) != "[ReadOnlyMany]" || fmt.Sprint(claim.Status.AccessModes) != "[ReadOnlyMany]" {
		t.Errorf("claim %s access modes spec %v status %v", claim.Name, claim.Spec.AccessModes, claim.Status.AccessModes)
	}
	got := c.runPod(t, ns, claim.Name, false, "if touch /workspace/f 2>/dev/null; then echo writable; else echo read-only; fi >/dev/termination-log")
	if got != "read-only" {
		t.Errorf("a pod could write to the ReadOnlyMany checkout: %q", got)
	}

	class := storageClass
	foreign := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "in-use"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
		},
	}
	if _, err := c.client.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	conflicting := checkoutSpec("conflicting", "", "pool")
	conflicting.Spec.ClaimName = "in-use"
	created, err = c.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(context.Background(), conflicting, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := acquired(created); ok || reason != "Conflict" {
		t.Fatalf("checkout of a claim name in use: reason %q", reason)
	}
	if err := c.client.CoreV1().PersistentVolumeClaims(ns).Delete(context.Background(), "in-use", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitAcquired(t, ns, "conflicting")
}

func TestDeletedClaimGetsANewVolumeAndPoolRefIsImmutable(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-redo")
	c.createPool(t, ns, poolSpec("pool", 2))
	c.waitPool(t, ns, "pool", 2)
	checkout, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(context.Background(), checkoutSpec("redo", "", "pool"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.expectBoundNow(t, checkout)

	_, err = c.kubectlRun(t, "", "-n", ns, "patch", "checkout", "redo", "--type=merge", "-p", `{"spec":{"poolRef":{"name":"another"}}}`)
	if err == nil || !strings.Contains(err.Error(), "spec.poolRef") || !strings.Contains(err.Error(), "immutable") {
		t.Errorf("changing poolRef after the handout: %v, want Invalid on spec.poolRef", err)
	}

	if err := c.client.CoreV1().PersistentVolumeClaims(ns).Delete(context.Background(), "redo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 4*time.Minute, "the checkout to hold a new volume", func(ctx context.Context) (bool, error) {
		current, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Get(ctx, "redo", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		_, ok := acquired(current)
		return ok && current.Status.VolumeName != checkout.Status.VolumeName, nil
	})
}

func TestBlockPoolIsCheckedOutAndWritten(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-block")
	pool := poolSpec("blocks", 1)
	block := corev1.PersistentVolumeBlock
	pool.Spec.Template.Spec.VolumeMode = &block
	c.createPool(t, ns, pool)
	c.waitPool(t, ns, "blocks", 1)
	checkout, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(context.Background(), checkoutSpec("raw", "", "blocks"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claim := c.expectBoundNow(t, checkout)
	if claim.Spec.VolumeMode == nil || *claim.Spec.VolumeMode != corev1.PersistentVolumeBlock {
		t.Fatalf("claim volume mode %v, want Block", claim.Spec.VolumeMode)
	}
	got := c.runPod(t, ns, claim.Name, true,
		"echo pvpool-block | dd of=/dev/xvda bs=512 count=1 conv=sync 2>/dev/null && dd if=/dev/xvda bs=12 count=1 2>/dev/null >/dev/termination-log")
	if got != "pvpool-block" {
		t.Errorf("read %q back from the block device", got)
	}
}

// TestConcurrentCheckouts sends 100 checkouts at once to a pool of 20: the 20 ready volumes go out in
// the create requests, the rest are served in creation order as the pool refills, no volume goes to
// two checkouts, and once everything is deleted no volume is left.
func TestConcurrentCheckouts(t *testing.T) {
	c := requirePVPool(t)
	ns := c.namespace(t, "e2e-load")
	c.createPool(t, ns, poolSpec("big", 20))
	pool := c.waitPool(t, ns, "big", 20)
	ready := map[string]bool{}
	for _, claim := range c.replicas(t, pool) {
		ready[claim.Spec.VolumeName] = true
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	servedAtOnce := map[string]string{}
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			checkout, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).Create(context.Background(), checkoutSpec(fmt.Sprintf("load-%03d", i), "", "big"), metav1.CreateOptions{})
			if err != nil {
				errs <- err
				return
			}
			if _, ok := acquired(checkout); ok {
				mu.Lock()
				servedAtOnce[checkout.Status.VolumeName] = checkout.Name
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	readyServed := 0
	for volume := range servedAtOnce {
		if ready[volume] {
			readyServed++
		}
	}
	if readyServed != 20 {
		t.Errorf("%d of the 20 ready volumes were handed out in the create requests, want all 20", readyServed)
	}

	var checkouts []v1alpha1.Checkout
	poll(t, 10*time.Minute, "all 100 checkouts to be served", func(ctx context.Context) (bool, error) {
		list, err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		checkouts = list.Items
		for i := range checkouts {
			if _, ok := acquired(&checkouts[i]); !ok {
				return false, nil
			}
		}
		return len(checkouts) == 100, nil
	})
	holders := map[string]string{}
	var waited []v1alpha1.Checkout
	for _, checkout := range checkouts {
		if other, taken := holders[checkout.Status.VolumeName]; taken {
			t.Errorf("volume %s handed to %s and %s", checkout.Status.VolumeName, other, checkout.Name)
		}
		holders[checkout.Status.VolumeName] = checkout.Name
		if _, atOnce := servedAtOnce[checkout.Status.VolumeName]; !atOnce {
			waited = append(waited, checkout)
		}
	}
	// Those that waited were served in creation order (timestamps have one-second resolution).
	sort.Slice(waited, func(i, j int) bool {
		a, b := waited[i].CreationTimestamp, waited[j].CreationTimestamp
		if !a.Equal(&b) {
			return a.Before(&b)
		}
		return waited[i].Name < waited[j].Name
	})
	for i := 1; i < len(waited); i++ {
		previous, current := acquiredAt(&waited[i-1]), acquiredAt(&waited[i])
		if current.Before(&previous) && !waited[i-1].CreationTimestamp.Equal(&waited[i].CreationTimestamp) {
			t.Errorf("%s (created %s) was served at %s, before the older %s at %s", waited[i].Name, waited[i].CreationTimestamp, current, waited[i-1].Name, previous)
		}
	}

	// Delete everything: every volume this pool ever made goes with it.
	volumes := map[string]types.UID{}
	for _, checkout := range checkouts {
		volumes[checkout.Status.VolumeName] = ""
	}
	for _, claim := range c.replicas(t, pool) {
		volumes[claim.Spec.VolumeName] = ""
	}
	if err := c.pvpool.PvpoolV1alpha1().Checkouts(ns).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.pvpool.PvpoolV1alpha1().Pools(ns).Delete(context.Background(), "big", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Minute, "every volume of the pool to be deleted", func(ctx context.Context) (bool, error) {
		list, err := c.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, volume := range list.Items {
			if _, ours := volumes[volume.Name]; ours {
				return false, nil
			}
			if ref := volume.Spec.ClaimRef; ref != nil && ref.Namespace == ns {
				return false, nil
			}
		}
		return true, nil
	})
}

func acquiredAt(checkout *v1alpha1.Checkout) metav1.Time {
	for _, condition := range checkout.Status.Conditions {
		if condition.Type == v1alpha1.CheckoutAcquired {
			return condition.LastTransitionTime
		}
	}
	return metav1.Time{}
}
