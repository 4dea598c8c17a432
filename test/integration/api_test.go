package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	corev1apply "k8s.io/client-go/applyconfigurations/core/v1"
	metav1apply "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	pvpoolapply "github.com/pvpool/pvpool/pkg/generated/applyconfiguration/pvpool/v1alpha1"
)

// seedPool is PVPool's README example, unmodified.
func seedPool(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "artifacts", "examples", "pvpool", "pool-with-init-job.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func newPool(name string, labels map[string]string) *v1alpha1.Pool {
	return &v1alpha1.Pool{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: v1alpha1.PoolSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": name}},
			Template: v1alpha1.PersistentVolumeClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"pool": name}},
				Spec: corev1.PersistentVolumeClaimSpec{
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
					},
				},
			},
		},
	}
}

func newCheckout(name, poolNamespace, poolName string) *v1alpha1.Checkout {
	return &v1alpha1.Checkout{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.CheckoutSpec{PoolRef: v1alpha1.PoolReference{Namespace: poolNamespace, Name: poolName}},
	}
}

func TestAPI(t *testing.T) {
	s := startServer(t, usePermissions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pools := s.client.PvpoolV1alpha1().Pools("default")

	t.Run("seed pool is accepted unmodified and defaulted", func(t *testing.T) {
		var pool v1alpha1.Pool
		if err := yaml.UnmarshalStrict(seedPool(t), &pool); err != nil {
			t.Fatal(err)
		}
		created, err := pools.Create(ctx, &pool, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if *created.Spec.Replicas != 5 || created.Spec.InitJob.VolumeName != "my-volume" {
			t.Errorf("spec not kept: replicas %d, volumeName %q", *created.Spec.Replicas, created.Spec.InitJob.VolumeName)
		}
		if got := created.Spec.Template.Spec.AccessModes; len(got) != 1 || got[0] != corev1.ReadWriteOnce {
			t.Errorf("template access modes defaulted to %v, want [ReadWriteOnce]", got)
		}
		if got := created.Spec.InitJob.Template.Spec.Template.Spec.RestartPolicy; got != corev1.RestartPolicyNever {
			t.Errorf("init job restartPolicy defaulted to %q, want Never", got)
		}
		if created.Generation != 1 {
			t.Errorf("generation %d on create, want 1", created.Generation)
		}
	})

	t.Run("defaults: replicas 1, init job volume workspace, checkout access mode ReadWriteOnce", func(t *testing.T) {
		pool := newPool("defaults", nil)
		pool.Spec.InitJob = &v1alpha1.MountJob{}
		pool.Spec.InitJob.Template.Spec.Template.Spec.Containers = []corev1.Container{{Name: "init", Image: "busybox:stable-musl"}}
		created, err := pools.Create(ctx, pool, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if *created.Spec.Replicas != 1 || created.Spec.InitJob.VolumeName != "workspace" {
			t.Errorf("got replicas %d, volumeName %q; want 1, workspace", *created.Spec.Replicas, created.Spec.InitJob.VolumeName)
		}
		checkout, err := s.client.PvpoolV1alpha1().Checkouts("default").Create(ctx, newCheckout("defaults", "", "defaults"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := checkout.Spec.AccessModes; len(got) != 1 || got[0] != corev1.ReadWriteOnce {
			t.Errorf("checkout access modes defaulted to %v", got)
		}
	})

	t.Run("list with label selector", func(t *testing.T) {
		for _, name := range []string{"blue-1", "blue-2", "green-1"} {
			color := strings.Split(name, "-")[0]
			if _, err := pools.Create(ctx, newPool(name, map[string]string{"color": color}), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		list, err := pools.List(ctx, metav1.ListOptions{LabelSelector: "color=blue"})
		if err != nil {
			t.Fatal(err)
		}
		if got := poolNames(list.Items); strings.Join(got, ",") != "blue-1,blue-2" {
			t.Errorf("color=blue selected %v", got)
		}
	})

	t.Run("list checkouts with field selectors on the pool reference", func(t *testing.T) {
		checkouts := s.client.PvpoolV1alpha1().Checkouts("team-a")
		for _, c := range []*v1alpha1.Checkout{
			newCheckout("implicit-namespace", "", "shared"),
			newCheckout("explicit-namespace", "team-a", "shared"),
			newCheckout("other-namespace", "storage", "shared"),
			newCheckout("other-pool", "", "private"),
		} {
			if _, err := checkouts.Create(ctx, c, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		cases := map[string]string{
			"spec.poolRef.name=shared":                               "explicit-namespace,implicit-namespace,other-namespace",
			"spec.poolRef.name=shared,spec.poolRef.namespace=team-a": "explicit-namespace,implicit-namespace",
			"spec.poolRef.namespace=storage":                         "other-namespace",
			"spec.poolRef.name!=shared":                              "other-pool",
			"spec.claimName=other-pool":                              "other-pool",
			"metadata.name=other-pool,spec.poolRef.namespace=team-a": "other-pool",
			"status.volumeName=":                                     "explicit-namespace,implicit-namespace,other-namespace,other-pool",
		}
		for selector, want := range cases {
			list, err := checkouts.List(ctx, metav1.ListOptions{FieldSelector: selector})
			if err != nil {
				t.Errorf("%s: %v", selector, err)
				continue
			}
			var got []string
			for _, c := range list.Items {
				got = append(got, c.Name)
			}
			sort.Strings(got)
			if strings.Join(got, ",") != want {
				t.Errorf("%s selected %v, want %s", selector, got, want)
			}
		}
		_, err := checkouts.List(ctx, metav1.ListOptions{FieldSelector: "spec.unknown=x"})
		if !apierrors.IsBadRequest(err) {
			t.Errorf("unsupported field selector: got %v, want 400 Bad Request", err)
		}
	})

	t.Run("watch, status and spec updates", func(t *testing.T) {
		watcher, err := pools.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=watched"})
		if err != nil {
			t.Fatal(err)
		}
		defer watcher.Stop()
		created, err := pools.Create(ctx, newPool("watched", nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		expectEvent(t, watcher, watch.Added, func(p *v1alpha1.Pool) bool { return p.Name == "watched" })

		// A status update changes the status only, and does not bump the generation.
		withStatus := created.DeepCopy()
		withStatus.Status = v1alpha1.PoolStatus{ObservedGeneration: 1, Replicas: 1, AvailableReplicas: 1,
			Conditions: []v1alpha1.PoolCondition{{Type: v1alpha1.PoolAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"}}}
		withStatus.Spec.Replicas = ptr(int32(7))
		updated, err := pools.UpdateStatus(ctx, withStatus, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if updated.Status.AvailableReplicas != 1 || *updated.Spec.Replicas != 1 || updated.Generation != 1 {
			t.Errorf("status update: available %d, replicas %d, generation %d; want 1, 1 (spec untouched), 1",
				updated.Status.AvailableReplicas, *updated.Spec.Replicas, updated.Generation)
		}
		expectEvent(t, watcher, watch.Modified, func(p *v1alpha1.Pool) bool { return p.Status.AvailableReplicas == 1 })

		// A spec update changes the spec only, and bumps the generation.
		withSpec := updated.DeepCopy()
		withSpec.Spec.Replicas = ptr(int32(3))
		withSpec.Status = v1alpha1.PoolStatus{}
		updated, err = pools.Update(ctx, withSpec, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if *updated.Spec.Replicas != 3 || updated.Status.AvailableReplicas != 1 || updated.Generation != 2 {
			t.Errorf("spec update: replicas %d, available %d, generation %d; want 3, 1 (status untouched), 2",
				*updated.Spec.Replicas, updated.Status.AvailableReplicas, updated.Generation)
		}
		expectEvent(t, watcher, watch.Modified, func(p *v1alpha1.Pool) bool { return *p.Spec.Replicas == 3 })

		// A metadata-only update does not bump the generation.
		updated.Labels = map[string]string{"touched": "yes"}
		updated, err = pools.Update(ctx, updated, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if updated.Generation != 2 {
			t.Errorf("label update bumped generation to %d", updated.Generation)
		}

		// A stale resourceVersion is a conflict.
		stale := created.DeepCopy()
		stale.Spec.Replicas = ptr(int32(9))
		if _, err := pools.Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			t.Errorf("update from a stale object: got %v, want 409 Conflict", err)
		}

		if err := pools.Delete(ctx, "watched", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		expectEvent(t, watcher, watch.Deleted, func(p *v1alpha1.Pool) bool { return p.Name == "watched" })
		if _, err := pools.Get(ctx, "watched", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("get after delete: got %v, want 404", err)
		}
	})

	t.Run("server-side apply", func(t *testing.T) {
		apply := pvpoolapply.Pool("applied", "default").
			WithSpec(pvpoolapply.PoolSpec().
				WithReplicas(2).
				WithSelector(metav1apply.LabelSelector().WithMatchLabels(map[string]string{"pool": "applied"})).
				WithTemplate(pvpoolapply.PersistentVolumeClaimTemplate().
					WithLabels(map[string]string{"pool": "applied"}).
					WithSpec(corev1apply.PersistentVolumeClaimSpec().
						WithResources(corev1apply.VolumeResourceRequirements().
							WithRequests(corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")})))))
		applied, err := pools.Apply(ctx, apply, metav1.ApplyOptions{FieldManager: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		if *applied.Spec.Replicas != 2 || !hasManager(applied.ManagedFields, "alice") {
			t.Errorf("apply created replicas %d, managers %v", *applied.Spec.Replicas, applied.ManagedFields)
		}

		// Another manager changing a field alice owns conflicts unless forced.
		bob := pvpoolapply.Pool("applied", "default").WithSpec(pvpoolapply.PoolSpec().WithReplicas(4))
		if _, err := pools.Apply(ctx, bob, metav1.ApplyOptions{FieldManager: "bob"}); !apierrors.IsConflict(err) {
			t.Errorf("conflicting apply: got %v, want 409 Conflict", err)
		}
		forced, err := pools.Apply(ctx, bob, metav1.ApplyOptions{FieldManager: "bob", Force: true})
		if err != nil {
			t.Fatal(err)
		}
		if *forced.Spec.Replicas != 4 {
			t.Errorf("forced apply left replicas %d", *forced.Spec.Replicas)
		}

		// Status is applied through the status subresource, and spec there is ignored.
		statusApply := pvpoolapply.Pool("applied", "default").WithStatus(pvpoolapply.PoolStatus().
			WithReplicas(4).WithAvailableReplicas(2).
			WithConditions(pvpoolapply.PoolCondition().WithType(v1alpha1.PoolSettlement).
				WithStatus(corev1.ConditionTrue).WithReason("Settled")))
		withStatus, err := pools.ApplyStatus(ctx, statusApply, metav1.ApplyOptions{FieldManager: "controller"})
		if err != nil {
			t.Fatal(err)
		}
		if withStatus.Status.AvailableReplicas != 2 || len(withStatus.Status.Conditions) != 1 || *withStatus.Spec.Replicas != 4 {
			t.Errorf("status apply gave status %+v, replicas %d", withStatus.Status, *withStatus.Spec.Replicas)
		}
		// The main resource ignores status in an apply.
		sneaky := pvpoolapply.Pool("applied", "default").WithStatus(pvpoolapply.PoolStatus().WithAvailableReplicas(0))
		after, err := pools.Apply(ctx, sneaky, metav1.ApplyOptions{FieldManager: "sneaky", Force: true})
		if err != nil {
			t.Fatal(err)
		}
		if after.Status.AvailableReplicas != 2 {
			t.Errorf("apply on the main resource changed status.availableReplicas to %d", after.Status.AvailableReplicas)
		}
	})

	t.Run("merge and JSON patches", func(t *testing.T) {
		if _, err := pools.Create(ctx, newPool("patched", nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		patched, err := pools.Patch(ctx, "patched", types.MergePatchType, []byte(`{"spec":{"replicas":6}}`), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if *patched.Spec.Replicas != 6 || patched.Generation != 2 {
			t.Errorf("merge patch: replicas %d generation %d", *patched.Spec.Replicas, patched.Generation)
		}
		_, err = pools.Patch(ctx, "patched", types.JSONPatchType, []byte(`[{"op":"replace","path":"/spec/replicas","value":-1}]`), metav1.PatchOptions{})
		expectInvalid(t, err, "spec.replicas")
	})

	t.Run("invalid objects are rejected with 422 and field paths", func(t *testing.T) {
		bad := newPool("bad-selector", nil)
		bad.Spec.Template.Labels = map[string]string{"pool": "other"}
		_, err := pools.Create(ctx, bad, metav1.CreateOptions{})
		expectInvalid(t, err, "spec.template.metadata.labels")

		bad = newPool("bad-init-job", nil)
		bad.Spec.InitJob = &v1alpha1.MountJob{VolumeName: "data"}
		bad.Spec.InitJob.Template.Spec.BackoffLimit = ptr(int32(11))
		bad.Spec.InitJob.Template.Spec.ActiveDeadlineSeconds = ptr(int64(601))
		bad.Spec.InitJob.Template.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
		bad.Spec.InitJob.Template.Spec.Template.Spec.Containers = []corev1.Container{{Name: "init", Image: "busybox"}}
		bad.Spec.InitJob.Template.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		_, err = pools.Create(ctx, bad, metav1.CreateOptions{})
		expectInvalid(t, err,
			"spec.initJob.template.spec.backoffLimit",
			"spec.initJob.template.spec.activeDeadlineSeconds",
			"spec.initJob.template.spec.template.spec.restartPolicy",
			"spec.initJob.template.spec.template.spec.volumes[0]")

		checkouts := s.client.PvpoolV1alpha1().Checkouts("default")
		badCheckout := newCheckout("bad", "Not_A_Namespace", "")
		badCheckout.Spec.ClaimName = "UPPER"
		badCheckout.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{"ReadSometimes"}
		_, err = checkouts.Create(ctx, badCheckout, metav1.CreateOptions{})
		expectInvalid(t, err, "spec.poolRef.name", "spec.poolRef.namespace", "spec.claimName", "spec.accessModes[0]")

		// Nothing of a rejected object is stored.
		if _, err := pools.Get(ctx, "bad-selector", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("rejected pool was stored: %v", err)
		}
	})

	t.Run("selector is immutable", func(t *testing.T) {
		pool, err := pools.Get(ctx, "blue-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pool.Spec.Selector.MatchLabels["extra"] = "x"
		pool.Spec.Template.Labels["extra"] = "x"
		_, err = pools.Update(ctx, pool, metav1.UpdateOptions{})
		expectInvalid(t, err, "spec.selector")
	})

	t.Run("checkout spec is immutable once a volume is checked out", func(t *testing.T) {
		checkouts := s.client.PvpoolV1alpha1().Checkouts("default")
		checkout, err := checkouts.Create(ctx, newCheckout("holding", "", "some-pool"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Before a volume is selected the pool can still be changed.
		checkout.Spec.PoolRef.Name = "another-pool"
		if checkout, err = checkouts.Update(ctx, checkout, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("changing poolRef before a volume is selected: %v", err)
		}
		checkout.Status.VolumeName = "pvc-1234"
		checkout.Status.VolumeClaimRef.Name = "holding"
		if checkout, err = checkouts.UpdateStatus(ctx, checkout, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		checkout.Spec.PoolRef.Name = "some-pool"
		checkout.Spec.ClaimName = "renamed"
		_, err = checkouts.Update(ctx, checkout, metav1.UpdateOptions{})
		expectInvalid(t, err, "spec.poolRef", "spec.claimName")

		bad := checkout.DeepCopy()
		bad.Status.Conditions = []v1alpha1.CheckoutCondition{{Type: "Exploded", Status: "Maybe"}}
		_, err = checkouts.UpdateStatus(ctx, bad, metav1.UpdateOptions{})
		expectInvalid(t, err, "status.conditions[0].type", "status.conditions[0].status")
	})

	t.Run("table printing", func(t *testing.T) {
		table := getTable(t, s, "/apis/pvpool.puppet.com/v1alpha1/namespaces/default/pools/applied")
		wantColumns := []string{"Name", "Replicas", "Available", "Age", "Selector", "Settled"}
		if got := columnNames(table); strings.Join(got, ",") != strings.Join(wantColumns, ",") {
			t.Fatalf("pool columns %v, want %v", got, wantColumns)
		}
		row := table.Rows[0].Cells
		if row[0] != "applied" || row[1] != float64(4) || row[2] != float64(2) || row[4] != "pool=applied" || row[5] != "Settled" {
			t.Errorf("pool row %v", row)
		}

		table = getTable(t, s, "/apis/pvpool.puppet.com/v1alpha1/namespaces/team-a/checkouts/other-namespace")
		wantColumns = []string{"Name", "Pool", "Claim", "Acquired", "Age", "Volume", "Access Modes"}
		if got := columnNames(table); strings.Join(got, ",") != strings.Join(wantColumns, ",") {
			t.Fatalf("checkout columns %v, want %v", got, wantColumns)
		}
		row = table.Rows[0].Cells
		if row[0] != "other-namespace" || row[1] != "storage/shared" || row[2] != "<none>" || row[3] != "<unknown>" || row[6] != "ReadWriteOnce" {
			t.Errorf("checkout row %v", row)
		}

		table = getTable(t, s, "/apis/pvpool.puppet.com/v1alpha1/namespaces/team-a/checkouts")
		if len(table.Rows) != 4 {
			t.Errorf("checkout list table has %d rows, want 4", len(table.Rows))
		}
	})

	t.Run("clients preferring protobuf get JSON", func(t *testing.T) {
		// kube-controller-manager's namespace deleter lists and deletes collections asking for protobuf
		// first; an encoding error there would keep namespaces with pools from ever being deleted.
		for _, verb := range []string{"GET", "DELETE"} {
			result := s.client.Discovery().RESTClient().Verb(verb).
				AbsPath("/apis/pvpool.puppet.com/v1alpha1/namespaces/team-a/checkouts").
				SetHeader("Accept", "application/vnd.kubernetes.protobuf, application/json").Do(ctx)
			var contentType string
			result.ContentType(&contentType)
			if err := result.Error(); err != nil {
				t.Errorf("%s with protobuf preferred: %v", verb, err)
			} else if !strings.HasPrefix(contentType, "application/json") {
				t.Errorf("%s with protobuf preferred answered %q", verb, contentType)
			}
		}
		if list, err := s.client.PvpoolV1alpha1().Checkouts("team-a").List(ctx, metav1.ListOptions{}); err != nil || len(list.Items) != 0 {
			t.Errorf("delete collection left %v (%v)", list, err)
		}
	})

	t.Run("discovery, OpenAPI and health endpoints", func(t *testing.T) {
		resources, err := s.client.Discovery().ServerResourcesForGroupVersion("pvpool.puppet.com/v1alpha1")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range resources.APIResources {
			names = append(names, r.Name)
		}
		sort.Strings(names)
		if strings.Join(names, ",") != "checkouts,checkouts/status,pools,pools/status" {
			t.Errorf("discovery lists %v", names)
		}
		for path, want := range map[string]string{
			"/openapi/v2": "com.puppet.pvpool.v1alpha1.Pool",
			"/openapi/v3/apis/pvpool.puppet.com/v1alpha1": "com.puppet.pvpool.v1alpha1.Checkout",
			"/livez":   "ok",
			"/readyz":  "ok",
			"/metrics": "apiserver_request_total",
		} {
			body, err := s.client.Discovery().RESTClient().Get().AbsPath(path).DoRaw(ctx)
			if err != nil {
				t.Errorf("GET %s: %v", path, err)
				continue
			}
			if !strings.Contains(string(body), want) {
				t.Errorf("GET %s does not mention %q", path, want)
			}
		}
	})
}

func ptr[T any](v T) *T { return &v }

func poolNames(items []v1alpha1.Pool) []string {
	var names []string
	for _, p := range items {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return names
}

func hasManager(fields []metav1.ManagedFieldsEntry, manager string) bool {
	for _, f := range fields {
		if f.Manager == manager {
			return true
		}
	}
	return false
}

func expectEvent(t *testing.T, watcher watch.Interface, eventType watch.EventType, match func(*v1alpha1.Pool) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case event, ok := <-watcher.ResultChan():
			if !ok {
				t.Fatalf("watch closed while waiting for %s", eventType)
			}
			if pool, isPool := event.Object.(*v1alpha1.Pool); isPool && event.Type == eventType && match(pool) {
				return
			}
		case <-timeout:
			t.Fatalf("no %s event within 30s", eventType)
		}
	}
}

// expectInvalid asserts err is a 422 Invalid naming at least the given fields.
func expectInvalid(t *testing.T, err error, fields ...string) {
	t.Helper()
	if !apierrors.IsInvalid(err) {
		t.Fatalf("got %v, want 422 Invalid", err)
	}
	status, ok := err.(apierrors.APIStatus)
	if !ok || status.Status().Details == nil {
		t.Fatalf("422 without details: %v", err)
	}
	got := map[string]bool{}
	for _, cause := range status.Status().Details.Causes {
		got[cause.Field] = true
	}
	for _, field := range fields {
		if !got[field] {
			t.Errorf("422 does not name %s; causes: %v", field, status.Status().Details.Causes)
		}
	}
}

func getTable(t *testing.T, s *testServer, path string) *metav1.Table {
	t.Helper()
	body, err := s.client.Discovery().RESTClient().Get().AbsPath(path).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").
		DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var table metav1.Table
	if err := json.Unmarshal(body, &table); err != nil {
		t.Fatal(err)
	}
	if len(table.Rows) == 0 {
		t.Fatalf("table of %s has no rows", path)
	}
	return &table
}

func columnNames(table *metav1.Table) []string {
	var names []string
	for _, c := range table.ColumnDefinitions {
		names = append(names, c.Name)
	}
	return names
}
