package pool

import (
	"errors"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
	"github.com/pvpool/pvpool/pkg/replica"
)

func TestScaleUpCreatesAllReplicasInOneReconcile(t *testing.T) {
	pool := newPool("scale-up", 5)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))

	f.sync(pool.Name)
	claims := f.claims(pool)
	if len(claims) != 5 {
		t.Fatalf("one reconcile created %d claims, want 5", len(claims))
	}
	for _, claim := range claims {
		if !strings.HasPrefix(claim.Name, "scale-up-") || claim.GenerateName != "scale-up-" {
			t.Errorf("claim %s: generateName %q, want scale-up-", claim.Name, claim.GenerateName)
		}
		if claim.Labels["app.kubernetes.io/name"] != "scale-up" || claim.Annotations["example.com/note"] != "from template" {
			t.Errorf("claim %s: labels %v annotations %v do not come from the template", claim.Name, claim.Labels, claim.Annotations)
		}
		owner := metav1.GetControllerOf(&claim)
		if owner == nil || owner.UID != pool.UID || owner.Kind != "Pool" || owner.APIVersion != "pvpool.puppet.com/v1alpha1" ||
			!ptr.Deref(owner.BlockOwnerDeletion, false) {
			t.Errorf("claim %s: controller reference %+v, want the pool blocking its deletion", claim.Name, owner)
		}
		if ptr.Deref(claim.Spec.StorageClassName, "") != "immediate" || claim.Spec.Resources.Requests.Storage().String() != "50Mi" {
			t.Errorf("claim %s: spec %+v is not the template's", claim.Name, claim.Spec)
		}
	}
	if events := f.events(); !hasEvent(events, "Normal PoolScaling Created 5 replicas") {
		t.Errorf("events %q lack PoolScaling Created 5 replicas", events)
	}
	status := f.pool(pool.Name).Status
	if status.Replicas != 5 || status.AvailableReplicas != 0 || status.ObservedGeneration != 1 {
		t.Errorf("status %+v, want 5 replicas, 0 available, generation 1", status)
	}

	// Another reconcile right away, before the cache may have seen the creations, must not create
	// the replicas again.
	if _, err := f.c.sync(f.ctx, testNamespace, pool.Name); err != nil {
		t.Fatal(err)
	}
	f.sync(pool.Name)
	if n := len(f.claims(pool)); n != 5 {
		t.Fatalf("%d claims after further reconciles, want 5", n)
	}
}

func TestBoundReplicasWithoutInitJobBecomeAvailable(t *testing.T) {
	pool := newPool("plain", 3)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)

	status := f.pool(pool.Name).Status
	if c := condition(f.pool(pool.Name), v1alpha1.PoolAvailable); c.Status != corev1.ConditionFalse || c.Reason != ReasonMinimumReplicasUnavailable {
		t.Errorf("Available %+v before any replica is bound, want False/%s", c, ReasonMinimumReplicasUnavailable)
	}
	if c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement); c.Status != corev1.ConditionUnknown || c.Reason != ReasonSettling {
		t.Errorf("Settlement %+v while replicas are pending, want Unknown/%s", c, ReasonSettling)
	}
	if status.AvailableReplicas != 0 {
		t.Fatalf("available %d before binding", status.AvailableReplicas)
	}

	claims := f.claims(pool)
	f.bind(claims[0])
	f.sync(pool.Name)
	got := f.pool(pool.Name)
	if got.Status.AvailableReplicas != 1 || got.Status.Replicas != 3 {
		t.Errorf("status %+v after binding one replica, want 3 replicas, 1 available", got.Status)
	}
	if c := condition(got, v1alpha1.PoolAvailable); c.Status != corev1.ConditionTrue || c.Reason != "MinimumReplicasAvailable" {
		t.Errorf("Available %+v with one replica available, want True/MinimumReplicasAvailable", c)
	}
	availableSince := condition(got, v1alpha1.PoolAvailable).LastTransitionTime
	for _, claim := range f.claims(pool) {
		want := claim.Name == claims[0].Name
		if replica.IsAvailable(&claim) != want {
			t.Errorf("claim %s available=%v, want %v", claim.Name, replica.IsAvailable(&claim), want)
		}
	}

	f.clock.Step(time.Minute)
	for _, claim := range f.claims(pool)[1:] {
		f.bind(claim)
	}
	f.sync(pool.Name)
	got = f.pool(pool.Name)
	if got.Status.AvailableReplicas != 3 {
		t.Errorf("available %d, want 3", got.Status.AvailableReplicas)
	}
	if c := condition(got, v1alpha1.PoolSettlement); c.Status != corev1.ConditionTrue || c.Reason != "Settled" ||
		!c.LastTransitionTime.Time.Equal(f.clock.Now()) {
		t.Errorf("Settlement %+v, want True/Settled since %v", c, f.clock.Now())
	}
	if c := condition(got, v1alpha1.PoolAvailable); !c.LastTransitionTime.Equal(&availableSince) {
		t.Errorf("Available moved its lastTransitionTime to %v without changing status (was %v)", c.LastTransitionTime, availableSince)
	}
	if jobs := f.jobs(); len(jobs) != 0 {
		t.Errorf("Immediate class without init job ran jobs %v", jobs)
	}
}

func TestScaleDownRemovesUnavailableReplicasFirstThenNewest(t *testing.T) {
	pool := newPool("shrink", 5)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	claims := f.claims(pool) // named in creation order
	// The two oldest and the newest become available; two in between stay pending.
	for _, i := range []int{0, 1, 4} {
		f.bind(claims[i])
	}
	f.sync(pool.Name)
	f.events()

	pool = f.pool(pool.Name)
	pool.Spec.Replicas = ptr.To(int32(3))
	f.updatePool(pool)
	f.sync(pool.Name)
	remaining := names(f.claims(pool))
	if want := []string{claims[0].Name, claims[1].Name, claims[4].Name}; !equalStrings(remaining, want) {
		t.Fatalf("after scaling to 3 the pool kept %v, want the available %v", remaining, want)
	}
	if events := f.events(); !hasEvent(events, "Normal PoolScaling Deleted 2 replicas") {
		t.Errorf("events %q lack PoolScaling Deleted 2 replicas", events)
	}

	pool = f.pool(pool.Name)
	pool.Spec.Replicas = ptr.To(int32(1))
	f.updatePool(pool)
	f.sync(pool.Name)
	if remaining := names(f.claims(pool)); !equalStrings(remaining, []string{claims[0].Name}) {
		t.Fatalf("after scaling to 1 the pool kept %v, want the oldest %s", remaining, claims[0].Name)
	}
	for _, action := range f.deleteActions("persistentvolumeclaims") {
		if p := action.GetDeleteOptions().Preconditions; p == nil || p.UID == nil || p.ResourceVersion == nil {
			t.Errorf("claim %s deleted without UID and resourceVersion preconditions", action.GetName())
		}
	}

	pool = f.pool(pool.Name)
	pool.Spec.Replicas = ptr.To(int32(0))
	f.updatePool(pool)
	f.sync(pool.Name)
	f.sync(pool.Name)
	got := f.pool(pool.Name)
	if n := len(f.claims(pool)); n != 0 || got.Status.Replicas != 0 {
		t.Fatalf("%d claims, status %+v after scaling to 0", n, got.Status)
	}
	if c := condition(got, v1alpha1.PoolAvailable); c.Status != corev1.ConditionFalse || c.Reason != "NoReplicasRequested" {
		t.Errorf("Available %+v with 0 replicas requested, want False/NoReplicasRequested", c)
	}
	if c := condition(got, v1alpha1.PoolSettlement); c.Status != corev1.ConditionTrue || c.Reason != "Settled" {
		t.Errorf("Settlement %+v with 0 replicas requested and none left, want True/Settled", c)
	}
}

func TestPoolsWithTheSameSelectorKeepTheirOwnReplicas(t *testing.T) {
	shared := map[string]string{"app": "shared"}
	a := newPool("pool-a", 2, withLabels(shared))
	b := newPool("pool-b", 3, withLabels(shared))
	f := newFixture(t, a, b, storageClass("immediate", storagev1.VolumeBindingImmediate))

	for range 3 {
		f.sync(a.Name)
		f.sync(b.Name)
	}
	if n := len(f.claims(a)); n != 2 {
		t.Errorf("pool-a owns %d claims, want 2", n)
	}
	if n := len(f.claims(b)); n != 3 {
		t.Errorf("pool-b owns %d claims, want 3", n)
	}
	if n := len(f.claims(nil)); n != 5 {
		t.Errorf("%d claims in the namespace, want 5", n)
	}
	if got := f.pool(a.Name).Status.Replicas; got != 2 {
		t.Errorf("pool-a status.replicas %d, want 2", got)
	}

	b = f.pool(b.Name)
	b.Spec.Replicas = ptr.To(int32(0))
	f.updatePool(b)
	f.sync(b.Name)
	f.sync(a.Name)
	if n := len(f.claims(a)); n != 2 {
		t.Errorf("pool-a owns %d claims after pool-b scaled to 0, want 2", n)
	}
	if n := len(f.claims(b)); n != 0 {
		t.Errorf("pool-b owns %d claims after scaling to 0", n)
	}
}

func TestTakenReplicasAreNeitherCountedNorTouched(t *testing.T) {
	pool := newPool("taken", 2)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	for _, claim := range f.claims(pool) {
		f.bind(claim)
	}
	f.sync(pool.Name)

	taken := f.claims(pool)[0]
	taken.Annotations[replica.AnnotationCheckout] = replica.CheckoutKey("app", "checkout", "uid-1")
	f.updateClaim(&taken)
	f.kube.ClearActions()
	f.sync(pool.Name)

	claims := f.claims(pool)
	if len(claims) != 3 {
		t.Fatalf("%d claims, want the taken one plus 2 replicas", len(claims))
	}
	status := f.pool(pool.Name).Status
	if status.Replicas != 2 || status.AvailableReplicas != 1 {
		t.Errorf("status %+v, want 2 replicas (the taken one not counted), 1 available", status)
	}

	// Scaling to zero leaves the taken claim to the handout.
	pool = f.pool(pool.Name)
	pool.Spec.Replicas = ptr.To(int32(0))
	f.updatePool(pool)
	f.sync(pool.Name)
	f.sync(pool.Name)
	remaining := f.claims(pool)
	if len(remaining) != 1 || remaining[0].Name != taken.Name {
		t.Fatalf("claims %v remain after scaling to 0, want only the taken %s", names(remaining), taken.Name)
	}
	for _, action := range f.kube.Actions() {
		if (action.GetVerb() == "update" || action.GetVerb() == "delete" || action.GetVerb() == "patch") &&
			action.GetResource().Resource == "persistentvolumeclaims" && actionName(action) == taken.Name {
			t.Errorf("the controller %sd the taken claim", action.GetVerb())
		}
	}
}

func TestInitJobIsCreatedWithTheClaimAndLimits(t *testing.T) {
	pool := newPool("init", 1, withInitJob(batchv1.JobSpec{
		BackoffLimit:            ptr.To(int32(50)),
		ActiveDeadlineSeconds:   ptr.To(int64(3600)),
		TTLSecondsAfterFinished: ptr.To(int32(0)),
		Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyOnFailure,
			Containers: []corev1.Container{{Name: "init", Image: "busybox:stable-musl",
				Command:      []string{"/bin/sh", "-c", "echo hi >/data/file"},
				VolumeMounts: []corev1.VolumeMount{{Name: "my-volume", MountPath: "/data"}}}},
		}},
	}, "my-volume"))
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	f.sync(pool.Name)

	claims := f.claims(pool)
	jobs := f.jobs()
	if len(claims) != 1 || len(jobs) != 1 {
		t.Fatalf("%d claims and %d jobs, want 1 of each", len(claims), len(jobs))
	}
	claim, job := claims[0], jobs[0]
	if job.Name != claim.Name+"-init" {
		t.Errorf("job %s, want %s-init", job.Name, claim.Name)
	}
	if owner := metav1.GetControllerOf(&job); owner == nil || owner.UID != claim.UID || owner.Kind != "PersistentVolumeClaim" {
		t.Errorf("job controlled by %+v, want claim %s", owner, claim.Name)
	}
	if got := ptr.Deref(job.Spec.BackoffLimit, -1); got != 10 {
		t.Errorf("backoffLimit %d, want capped to 10", got)
	}
	if got := ptr.Deref(job.Spec.ActiveDeadlineSeconds, -1); got != 600 {
		t.Errorf("activeDeadlineSeconds %d, want capped to 600", got)
	}
	if job.Spec.TTLSecondsAfterFinished != nil {
		t.Errorf("ttlSecondsAfterFinished %d kept: the job could vanish before the controller sees it succeed", *job.Spec.TTLSecondsAfterFinished)
	}
	podSpec := job.Spec.Template.Spec
	if podSpec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy %s, want Never", podSpec.RestartPolicy)
	}
	if len(podSpec.Volumes) != 1 || podSpec.Volumes[0].Name != "my-volume" || podSpec.Volumes[0].PersistentVolumeClaim == nil ||
		podSpec.Volumes[0].PersistentVolumeClaim.ClaimName != claim.Name {
		t.Errorf("pod volumes %+v, want my-volume from claim %s", podSpec.Volumes, claim.Name)
	}
	if podSpec.Containers[0].VolumeMounts[0].Name != "my-volume" {
		t.Errorf("container mounts changed: %+v", podSpec.Containers[0].VolumeMounts)
	}
	if replica.IsAvailable(&claim) || f.pool(pool.Name).Status.AvailableReplicas != 0 {
		t.Error("replica available before its init job succeeded")
	}

	// Bound alone is not enough while the job runs.
	f.bind(claim)
	f.sync(pool.Name)
	if got := f.claims(pool)[0]; got.Annotations[replica.AnnotationAvailable] != "" {
		t.Fatal("a bound replica became available while its init job runs")
	}
}

func TestInitJobWithoutDeadlineGetsTheMaximum(t *testing.T) {
	pool := newPool("no-deadline", 1, withInitJob(batchv1.JobSpec{
		Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "init", Image: "busybox:stable-musl"}},
			Volumes: []corev1.Volume{{Name: "workspace", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "placeholder"}}}},
		}},
	}, ""))
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	f.sync(pool.Name)
	jobs := f.jobs()
	if len(jobs) != 1 {
		t.Fatalf("%d jobs, want 1", len(jobs))
	}
	job := jobs[0]
	if got := ptr.Deref(job.Spec.ActiveDeadlineSeconds, -1); got != 600 {
		t.Errorf("activeDeadlineSeconds %d, want 600 when unset", got)
	}
	if job.Spec.BackoffLimit != nil {
		t.Errorf("backoffLimit %d set although the template left it to the Job default", *job.Spec.BackoffLimit)
	}
	volumes := job.Spec.Template.Spec.Volumes
	if len(volumes) != 1 || volumes[0].Name != "workspace" || volumes[0].PersistentVolumeClaim.ClaimName != f.claims(pool)[0].Name {
		t.Errorf("volumes %+v, want workspace from the replica claim", volumes)
	}
}

func TestInitJobSuccessMakesReplicaAvailableAndDeletesJob(t *testing.T) {
	pool := newPool("init-ok", 2, withInitJob(batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "init", Image: "busybox:stable-musl"}}}}}, "workspace"))
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	f.sync(pool.Name)
	for _, claim := range f.claims(pool) {
		f.bind(claim)
	}
	jobs := f.jobs()
	if len(jobs) != 2 {
		t.Fatalf("%d jobs, want 2", len(jobs))
	}
	f.finishJob(jobs[0], batchv1.JobComplete)
	f.kube.ClearActions()
	f.sync(pool.Name)
	if deletes := f.deleteActions("jobs"); len(deletes) != 0 {
		t.Errorf("job deleted in the reconcile that marked its replica available: a reconcile on a cache " +
			"without the mark would run it again")
	}
	if c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement); c.Reason == "Settled" {
		t.Errorf("Settlement %+v while a replica is initializing", c)
	}
	f.sync(pool.Name)

	var available []string
	for _, claim := range f.claims(pool) {
		if replica.IsAvailable(&claim) {
			available = append(available, claim.Name)
		}
	}
	if want := strings.TrimSuffix(jobs[0].Name, "-init"); len(available) != 1 || available[0] != want {
		t.Errorf("available replicas %v, want [%s]", available, want)
	}
	deletes := f.deleteActions("jobs")
	if len(deletes) != 1 || deletes[0].GetName() != jobs[0].Name {
		t.Fatalf("job deletes %v, want %s", deletes, jobs[0].Name)
	}
	if policy := deletes[0].GetDeleteOptions().PropagationPolicy; policy == nil || *policy != metav1.DeletePropagationBackground {
		t.Errorf("job deleted with propagation %v, want Background so its pods go too", policy)
	}
	if remaining := f.jobs(); len(remaining) != 1 || remaining[0].Name != jobs[1].Name {
		t.Errorf("jobs %v remain, want only %s", remaining, jobs[1].Name)
	}
	if status := f.pool(pool.Name).Status; status.AvailableReplicas != 1 || status.Replicas != 2 {
		t.Errorf("status %+v, want 2 replicas, 1 available", status)
	}

	// A reconcile later does not run the job again for the available replica.
	f.sync(pool.Name)
	if n := len(f.jobs()); n != 1 {
		t.Errorf("%d jobs after another reconcile, want 1", n)
	}
}

func TestFailedInitJobReplacesReplicaWithBackoff(t *testing.T) {
	pool := newPool("init-fail", 1, withInitJob(batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "init", Image: "busybox:stable-musl", Command: []string{"false"}}}}}}, "workspace"))
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))

	// Each round: the job fails, the replica is deleted and its replacement waits, twice as long as
	// the round before, up to the maximum (10s, 20s, 40s, 40s).
	for round, wantWait := range []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 40 * time.Second} {
		f.sync(pool.Name)
		f.sync(pool.Name)
		claims, jobs := f.claims(pool), f.jobs()
		if len(claims) != 1 || len(jobs) != 1 {
			t.Fatalf("round %d: %d claims and %d jobs, want 1 of each", round, len(claims), len(jobs))
		}
		failed := claims[0]
		f.finishJob(jobs[0], batchv1.JobFailed)
		f.events()

		requeue := f.sync(pool.Name)
		if claims := f.claims(pool); len(claims) != 0 {
			t.Fatalf("round %d: claims %v remain, want the failed replica deleted and no replacement yet", round, names(claims))
		}
		if requeue != wantWait {
			t.Errorf("round %d: requeued after %v, want %v", round, requeue, wantWait)
		}
		if events := f.events(); !hasEvent(events, "Warning StaleReplica Deleted stale replica "+failed.Name) {
			t.Errorf("round %d: events %q lack StaleReplica for %s", round, events, failed.Name)
		}
		if c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement); c.Reason != "InitJobFailed" || c.Status != corev1.ConditionUnknown {
			t.Errorf("round %d: Settlement %+v, want Unknown/InitJobFailed", round, c)
		}

		// Nothing is created before the backoff expires.
		f.clock.Step(wantWait - time.Second)
		f.sync(pool.Name)
		if claims := f.claims(pool); len(claims) != 0 {
			t.Fatalf("round %d: replacement %v created before the backoff expired", round, names(claims))
		}
		f.clock.Step(time.Second)
	}

	// The replacement is created once the backoff expired; when its job succeeds the pool settles.
	f.sync(pool.Name)
	f.sync(pool.Name)
	claims, jobs := f.claims(pool), f.jobs()
	if len(claims) != 1 || len(jobs) != 1 {
		t.Fatalf("%d claims and %d jobs after the backoff, want 1 of each", len(claims), len(jobs))
	}
	f.bind(claims[0])
	f.finishJob(jobs[0], batchv1.JobComplete)
	f.sync(pool.Name) // marks the replica available
	f.sync(pool.Name) // deletes its job
	f.sync(pool.Name)
	if c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement); c.Reason != "Settled" {
		t.Errorf("Settlement %+v after a job succeeded, want Settled", c)
	}
	if wait, failing, _ := f.c.backoff.remaining(pool.UID, f.clock.Now()); failing || wait != 0 {
		t.Errorf("backoff still active (%v) after the pool settled", wait)
	}
}

func TestLostReplicasAreReplaced(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose func(f *fixture, claim corev1.PersistentVolumeClaim)
	}{
		{"claim Lost", func(f *fixture, claim corev1.PersistentVolumeClaim) {
			claim.Status.Phase = corev1.ClaimLost
			f.updateClaim(&claim)
		}},
		{"volume deleted", func(f *fixture, claim corev1.PersistentVolumeClaim) {
			if err := f.kube.CoreV1().PersistentVolumes().Delete(f.ctx, claim.Spec.VolumeName, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}},
		{"volume Failed", func(f *fixture, claim corev1.PersistentVolumeClaim) {
			volume, err := f.kube.CoreV1().PersistentVolumes().Get(f.ctx, claim.Spec.VolumeName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			volume.Status.Phase = corev1.VolumeFailed
			if _, err := f.kube.CoreV1().PersistentVolumes().UpdateStatus(f.ctx, volume, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := newPool("lost", 2)
			f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
			f.sync(pool.Name)
			for _, claim := range f.claims(pool) {
				f.bind(claim)
			}
			f.sync(pool.Name)
			claims := f.claims(pool)
			f.events()

			tc.lose(f, claims[0])
			f.sync(pool.Name)
			after := names(f.claims(pool))
			if len(after) != 2 || contains(after, claims[0].Name) || !contains(after, claims[1].Name) {
				t.Fatalf("claims %v after losing %s, want it replaced and %s kept", after, claims[0].Name, claims[1].Name)
			}
			if events := f.events(); !hasEvent(events, "Warning StaleReplica Deleted stale replica "+claims[0].Name) {
				t.Errorf("events %q lack StaleReplica for %s", events, claims[0].Name)
			}
		})
	}
}

func TestDeletedReplicaIsReplaced(t *testing.T) {
	pool := newPool("deleted", 2)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	claims := f.claims(pool)

	// A claim kept by a finalizer while it is deleted no longer counts.
	terminating := claims[0]
	terminating.DeletionTimestamp = ptr.To(metav1.NewTime(f.clock.Now()))
	terminating.Finalizers = []string{"kubernetes.io/pvc-protection"}
	f.updateClaim(&terminating)
	if err := f.kube.CoreV1().PersistentVolumeClaims(testNamespace).Delete(f.ctx, claims[1].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.sync(pool.Name)
	var alive []string
	for _, claim := range f.claims(pool) {
		if claim.DeletionTimestamp == nil {
			alive = append(alive, claim.Name)
		}
	}
	if len(alive) != 2 || contains(alive, claims[0].Name) || contains(alive, claims[1].Name) {
		t.Errorf("live claims %v, want two new replicas", alive)
	}
	if got := f.pool(pool.Name).Status.Replicas; got != 2 {
		t.Errorf("status.replicas %d, want 2 (the terminating claim not counted)", got)
	}
}

func TestWaitForFirstConsumerClaimsGetABinderJob(t *testing.T) {
	pool := newPool("wffc", 1, withClass("late"))
	f := newFixture(t, pool, storageClass("late", storagev1.VolumeBindingWaitForFirstConsumer))
	f.sync(pool.Name)
	f.sync(pool.Name)
	claims, jobs := f.claims(pool), f.jobs()
	if len(claims) != 1 || len(jobs) != 1 {
		t.Fatalf("%d claims and %d jobs, want a binder job for the claim", len(claims), len(jobs))
	}
	claim, job := claims[0], jobs[0]
	if job.Name != claim.Name+"-bind" || job.Labels[LabelJobRole] != "bind" {
		t.Errorf("job %s labels %v, want %s-bind", job.Name, job.Labels, claim.Name)
	}
	podSpec := job.Spec.Template.Spec
	container := podSpec.Containers[0]
	if container.Image != DefaultBinderImage || strings.Join(container.Command, " ") != "true" {
		t.Errorf("binder container %s %v, want %s true", container.Image, container.Command, DefaultBinderImage)
	}
	if podSpec.RestartPolicy != corev1.RestartPolicyNever || len(podSpec.Volumes) != 1 ||
		podSpec.Volumes[0].PersistentVolumeClaim == nil || podSpec.Volumes[0].PersistentVolumeClaim.ClaimName != claim.Name ||
		len(container.VolumeMounts) != 1 || container.VolumeMounts[0].Name != podSpec.Volumes[0].Name {
		t.Errorf("binder pod %+v does not mount claim %s", podSpec, claim.Name)
	}
	if owner := metav1.GetControllerOf(&job); owner == nil || owner.UID != claim.UID {
		t.Errorf("binder job controlled by %+v, want the claim", owner)
	}
	if sc := podSpec.SecurityContext; sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || container.SecurityContext == nil ||
		ptr.Deref(container.SecurityContext.AllowPrivilegeEscalation, true) {
		t.Errorf("binder pod security %+v / %+v, want non-root without privilege escalation", sc, container.SecurityContext)
	}

	// Bound while the binder pod still runs: not yet handed out.
	claim = f.bind(claim)
	f.sync(pool.Name)
	if got := f.claims(pool)[0]; got.Annotations[replica.AnnotationAvailable] != "" {
		t.Fatal("replica available while its binder pod still runs")
	}
	f.finishJob(job, batchv1.JobComplete)
	f.sync(pool.Name)
	if got := f.claims(pool)[0]; !replica.IsAvailable(&got) {
		t.Error("bound replica not available after its binder job completed")
	}
	f.sync(pool.Name)
	if jobs := f.jobs(); len(jobs) != 0 {
		t.Errorf("binder jobs %v remain", names2(jobs))
	}
}

func TestBlockModeBinderMapsTheDevice(t *testing.T) {
	pool := newPool("block", 1, withClass("late"), func(p *v1alpha1.Pool) {
		p.Spec.Template.Spec.VolumeMode = ptr.To(corev1.PersistentVolumeBlock)
	})
	f := newFixture(t, pool, storageClass("late", storagev1.VolumeBindingWaitForFirstConsumer))
	f.sync(pool.Name)
	f.sync(pool.Name)
	jobs := f.jobs()
	if len(jobs) != 1 {
		t.Fatalf("%d jobs, want 1", len(jobs))
	}
	container := jobs[0].Spec.Template.Spec.Containers[0]
	if len(container.VolumeDevices) != 1 || len(container.VolumeMounts) != 0 {
		t.Errorf("binder container for a Block claim: devices %+v mounts %+v, want one device", container.VolumeDevices, container.VolumeMounts)
	}
}

func TestInitJobBindsWaitForFirstConsumerClaimsWithoutBinder(t *testing.T) {
	pool := newPool("wffc-init", 1, withClass("late"), withInitJob(batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "init", Image: "busybox:stable-musl"}}}}}, "workspace"))
	f := newFixture(t, pool, storageClass("late", storagev1.VolumeBindingWaitForFirstConsumer))
	f.sync(pool.Name)
	f.sync(pool.Name)
	jobs := f.jobs()
	if len(jobs) != 1 || jobs[0].Labels[LabelJobRole] != "init" {
		t.Fatalf("jobs %v, want only the init job", names2(jobs))
	}
}

func TestMissingStorageClassMakesPoolInvalid(t *testing.T) {
	pool := newPool("no-class", 2, withClass("missing"))
	f := newFixture(t, pool)
	f.sync(pool.Name)
	if n := len(f.claims(pool)); n != 0 {
		t.Errorf("%d claims created for a class that does not exist", n)
	}
	c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement)
	if c.Status != corev1.ConditionFalse || c.Reason != "Invalid" || !strings.Contains(c.Message, `"missing"`) {
		t.Errorf("Settlement %+v, want False/Invalid naming the class", c)
	}
	if events := f.events(); !hasEvent(events, "Warning Invalid") {
		t.Errorf("events %q lack a warning", events)
	}

	if _, err := f.kube.StorageV1().StorageClasses().Create(f.ctx, storageClass("missing", storagev1.VolumeBindingImmediate), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.sync(pool.Name)
	if n := len(f.claims(pool)); n != 2 {
		t.Errorf("%d claims once the class exists, want 2", n)
	}
	if c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement); c.Reason == "Invalid" {
		t.Errorf("Settlement still %+v", c)
	}
}

func TestRejectedClaimMakesPoolInvalid(t *testing.T) {
	pool := newPool("rejected", 2)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.kube.PrependReactor("create", "persistentvolumeclaims", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInvalid(schema.GroupKind{Kind: "PersistentVolumeClaim"}, "",
			field.ErrorList{field.Invalid(field.NewPath("spec", "resources"), "50Mi", "too small for this class")})
	})
	requeue, err := f.c.sync(f.ctx, testNamespace, pool.Name)
	if err != nil || requeue != 0 {
		t.Fatalf("sync returned %v, %v; an invalid template is not retried before the pool changes", requeue, err)
	}
	c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement)
	if c.Status != corev1.ConditionFalse || c.Reason != "Invalid" || !strings.Contains(c.Message, "too small") {
		t.Errorf("Settlement %+v, want False/Invalid with the server's message", c)
	}
}

func TestConflictIsReturnedForRequeue(t *testing.T) {
	pool := newPool("conflict", 1)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.pvpool.PrependReactor("update", "pools", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() == "status" {
			return true, nil, apierrors.NewConflict(v1alpha1.Resource("pools"), pool.Name, nil)
		}
		return false, nil, nil
	})
	f.settle()
	_, err := f.c.sync(f.ctx, testNamespace, pool.Name)
	if !apierrors.IsConflict(err) {
		t.Fatalf("sync returned %v, want the conflict", err)
	}
	// The claim was still created, once.
	if n := len(f.claims(pool)); n != 1 {
		t.Errorf("%d claims, want 1", n)
	}
}

func TestLongClaimNamesGiveValidJobNames(t *testing.T) {
	long := strings.Repeat("a", 58) + "-xyz12"
	init, bind := jobName(long, jobRoleInit), jobName(long, jobRoleBind)
	if len(init) > 63 || len(bind) > 63 || !strings.HasSuffix(init, "-init") || init == jobName(strings.Repeat("a", 58)+"-xyz13", jobRoleInit) {
		t.Errorf("job names %q, %q: want at most 63 characters, distinct per claim", init, bind)
	}
	if got := jobName("short", jobRoleInit); got != "short-init" {
		t.Errorf("jobName(short) = %q", got)
	}
}

func names(claims []corev1.PersistentVolumeClaim) []string {
	var out []string
	for _, claim := range claims {
		out = append(out, claim.Name)
	}
	return out
}

func names2(jobs []batchv1.Job) []string {
	var out []string
	for _, job := range jobs {
		out = append(out, job.Name)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, item := range list {
		if item == s {
			return true
		}
	}
	return false
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func actionName(action clienttesting.Action) string {
	switch a := action.(type) {
	case clienttesting.DeleteAction:
		return a.GetName()
	case clienttesting.UpdateAction:
		if obj, ok := a.GetObject().(metav1.Object); ok {
			return obj.GetName()
		}
	}
	return ""
}

// TestRunFillsPoolThroughEvents goes through the informers' event handlers and the work queue: the
// pool is reconciled as its objects change, without calling sync.
func TestRunFillsPoolThroughEvents(t *testing.T) {
	f := newFixtureWithClock(t, clock.RealClock{}, storageClass("immediate", storagev1.VolumeBindingImmediate))
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.c.Run(f.ctx, 2)
	}()
	t.Cleanup(func() {
		f.cancel()
		<-done
	})

	pool := newPool("running", 3, withInitJob(batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "init", Image: "busybox:stable-musl"}}}}}, "workspace"))
	// Through the tracker: the generated fake's field manager has no schema for Pool, so it refuses
	// creates through the typed client.
	if err := f.pvpool.Tracker().Add(pool); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "3 claims with init jobs", func() bool { return len(f.claims(pool)) == 3 && len(f.jobs()) == 3 })
	for _, claim := range f.claims(pool) {
		f.bind(claim)
	}
	for _, job := range f.jobs() {
		f.finishJob(job, batchv1.JobComplete)
	}
	waitFor(t, "pool settled with 3 available replicas", func() bool {
		got := f.pool(pool.Name)
		return got.Status.AvailableReplicas == 3 && condition(got, v1alpha1.PoolSettlement).Reason == "Settled"
	})
	if jobs := f.jobs(); len(jobs) != 0 {
		t.Errorf("jobs %v remain after they succeeded", names2(jobs))
	}

	// A checkout takes one replica (the handout annotates, then deletes it): the pool refills.
	taken := f.claims(pool)[0]
	taken.Annotations[replica.AnnotationCheckout] = replica.CheckoutKey("app", "c", "uid-c")
	f.updateClaim(&taken)
	if err := f.kube.CoreV1().PersistentVolumeClaims(testNamespace).Delete(f.ctx, taken.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a replacement replica with its init job", func() bool {
		claims := f.claims(pool)
		return len(claims) == 3 && !contains(names(claims), taken.Name) && len(f.jobs()) == 1
	})
	time.Sleep(200 * time.Millisecond)
	if n := len(f.claims(pool)); n != 3 {
		t.Errorf("%d claims after the refill settled, want 3", n)
	}
}

func waitFor(t *testing.T, what string, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTerminatingNamespaceAndDeletedPoolAreNotRetried(t *testing.T) {
	pool := newPool("ending", 2)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.kube.PrependReactor("create", "persistentvolumeclaims", func(clienttesting.Action) (bool, runtime.Object, error) {
		err := apierrors.NewForbidden(schema.GroupResource{Resource: "persistentvolumeclaims"}, "ending-",
			errors.New("unable to create new content in namespace storage because it is being terminated"))
		err.ErrStatus.Details.Causes = []metav1.StatusCause{{Type: corev1.NamespaceTerminatingCause, Field: "metadata.namespace"}}
		return true, nil, err
	})
	f.pvpool.PrependReactor("update", "pools", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(v1alpha1.Resource("pools"), pool.Name)
	})
	f.settle()
	if requeue, err := f.c.sync(f.ctx, testNamespace, pool.Name); err != nil || requeue != 0 {
		t.Errorf("sync returned %v, %v; want no retry for a namespace and pool on their way out", requeue, err)
	}
	if events := f.events(); hasEvent(events, "Normal PoolScaling") {
		t.Errorf("events %q report replicas the namespace refused", events)
	}
}

// TestCrashAfterMarkingAvailableDeletesTheLeftoverJob: the controller stopped between marking the
// replica available and deleting its init job; the next reconcile only deletes the job.
func TestCrashAfterMarkingAvailableDeletesTheLeftoverJob(t *testing.T) {
	pool := newPool("crashed", 1, withInitJob(batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "init", Image: "busybox:stable-musl"}}}}}, "workspace"))
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	f.sync(pool.Name)
	claim := f.bind(f.claims(pool)[0])
	job := f.jobs()[0]
	f.finishJob(job, batchv1.JobComplete)
	claim.Annotations[replica.AnnotationAvailable] = "true"
	f.updateClaim(&claim)
	f.kube.ClearActions()

	f.sync(pool.Name)
	if jobs := f.jobs(); len(jobs) != 0 {
		t.Errorf("jobs %v left after the replica was available", names2(jobs))
	}
	for _, action := range f.kube.Actions() {
		if action.GetResource().Resource == "persistentvolumeclaims" && action.GetVerb() != "get" && action.GetVerb() != "list" && action.GetVerb() != "watch" {
			t.Errorf("unexpected %s of claims", action.GetVerb())
		}
	}
	if got := f.pool(pool.Name).Status; got.AvailableReplicas != 1 {
		t.Errorf("status %+v, want 1 available", got)
	}
}

// TestInitJobFailedSurvivesARestart: a new controller does not remember the failures, but the pool's
// Settlement stays InitJobFailed until the pool settles.
func TestInitJobFailedSurvivesARestart(t *testing.T) {
	pool := newPool("restarted", 1, withInitJob(batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "init", Image: "busybox:stable-musl"}}}}}, "workspace"))
	pool.Status.Conditions = []v1alpha1.PoolCondition{{Type: v1alpha1.PoolSettlement, Status: corev1.ConditionUnknown,
		Reason: "InitJobFailed", Message: "A replica could not be initialized: job x failed", LastTransitionTime: metav1.NewTime(testStart)}}
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	if c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement); c.Reason != "InitJobFailed" || !strings.Contains(c.Message, "job x failed") {
		t.Errorf("Settlement %+v after a restart, want the InitJobFailed condition kept", c)
	}
	f.sync(pool.Name)
	f.bind(f.claims(pool)[0])
	f.finishJob(f.jobs()[0], batchv1.JobComplete)
	for i := range 3 {
		f.sync(pool.Name)
		// Marking the replica available, then deleting its job, does not settle the pool yet.
		if c := condition(f.pool(pool.Name), v1alpha1.PoolSettlement); (c.Reason == "Settled") != (i == 2) {
			t.Errorf("reconcile %d: Settlement %+v", i, c)
		}
	}
}

// TestReplicaThatCannotBeAssessedStillCounts: when the volume of a bound replica cannot be read,
// the replica is left alone, not replaced by an extra one.
func TestReplicaThatCannotBeAssessedStillCounts(t *testing.T) {
	pool := newPool("unreadable", 1)
	f := newFixture(t, pool, storageClass("immediate", storagev1.VolumeBindingImmediate))
	f.sync(pool.Name)
	claim := f.claims(pool)[0]
	// Bound to a volume the cache does not know, and the server cannot be asked about it.
	claim.Spec.VolumeName = "pv-unreachable"
	claim.Status.Phase = corev1.ClaimBound
	f.updateClaim(&claim)
	f.kube.PrependReactor("get", "persistentvolumes", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("try later")
	})
	f.settle()
	if _, err := f.c.sync(f.ctx, testNamespace, pool.Name); err == nil {
		t.Error("sync hid the error reading the volume")
	}
	if claims := f.claims(pool); len(claims) != 1 {
		t.Errorf("claims %v, want the one replica only", names(claims))
	}
}
