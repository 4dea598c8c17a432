package pool

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
)

const (
	// LabelJobRole tells which of the pool controller's jobs a Job is: init or bind.
	LabelJobRole = "pvpool.puppet.com/job-role"
	// LabelReplica names the replica claim a job works on.
	LabelReplica = "pvpool.puppet.com/replica"

	jobRoleInit = "init"
	jobRoleBind = "bind"

	binderVolumeName  = "replica"
	binderMountPath   = "/replica"
	binderDevicePath  = "/dev/replica"
	binderBackoff     = int32(2)
	binderDeadline    = int64(300)
	labelValueMaxHash = 8
	nobody            = int64(65534)
)

// jobName derives the name of claim's job of the given role. Job names end up in pod labels, so they
// must be valid label values (63 characters); a long claim name is shortened and made unique again
// with a hash of the full name.
func jobName(claimName, role string) string {
	suffix := "-" + role
	if len(claimName)+len(suffix) <= validation.LabelValueMaxLength {
		return claimName + suffix
	}
	sum := sha256.Sum256([]byte(claimName))
	hash := hex.EncodeToString(sum[:])[:labelValueMaxHash]
	keep := validation.LabelValueMaxLength - len(suffix) - len(hash) - 1
	return claimName[:keep] + "-" + hash + suffix
}

// replicaLabel is the claim name as a label value, shortened the same way as job names if needed.
func replicaLabel(claimName string) string {
	if len(claimName) <= validation.LabelValueMaxLength {
		return claimName
	}
	sum := sha256.Sum256([]byte(claimName))
	hash := hex.EncodeToString(sum[:])[:labelValueMaxHash]
	return claimName[:validation.LabelValueMaxLength-len(hash)-1] + "-" + hash
}

func claimOwnerReference(claim *corev1.PersistentVolumeClaim) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion: "v1",
		Kind:       "PersistentVolumeClaim",
		Name:       claim.Name,
		UID:        claim.UID,
		Controller: ptr.To(true),
	}
}

// newInitJob builds pool's init job for claim: the template's job with the claim as pod volume
// volumeName, restartPolicy Never, and the backoff limit and deadline capped. The job is owned by
// the claim, so deleting the claim removes it.
func newInitJob(pool *v1alpha1.Pool, claim *corev1.PersistentVolumeClaim) *batchv1.Job {
	initJob := pool.Spec.InitJob
	volumeName := initJob.VolumeName
	if volumeName == "" {
		volumeName = v1alpha1.DefaultInitJobVolumeName
	}
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{
			Name:            jobName(claim.Name, jobRoleInit),
			Namespace:       claim.Namespace,
			Labels:          copyMap(initJob.Template.Labels),
			Annotations:     copyMap(initJob.Template.Annotations),
			OwnerReferences: []metav1.OwnerReference{claimOwnerReference(claim)},
		},
		Spec: *initJob.Template.Spec.DeepCopy(),
	}
	job.Labels[LabelJobRole] = jobRoleInit
	job.Labels[LabelReplica] = replicaLabel(claim.Name)

	spec := &job.Spec
	if spec.BackoffLimit != nil && *spec.BackoffLimit > pvpool.MaxInitJobBackoffLimit {
		spec.BackoffLimit = ptr.To(pvpool.MaxInitJobBackoffLimit)
	}
	if spec.ActiveDeadlineSeconds == nil || *spec.ActiveDeadlineSeconds > pvpool.MaxInitJobActiveDeadlineSeconds {
		spec.ActiveDeadlineSeconds = ptr.To(pvpool.MaxInitJobActiveDeadlineSeconds)
	}
	// The init job's pods are all the pool's: a retry must not restart a container in place on a
	// half-written volume, it fails the pod and the Job counts it against backoffLimit.
	spec.Template.Spec.RestartPolicy = corev1.RestartPolicyNever
	// The controller deletes the job once it has seen it succeed; a job removed earlier by its TTL
	// would look never run, and run again.
	spec.TTLSecondsAfterFinished = nil
	setClaimVolume(&spec.Template.Spec, volumeName, claim.Name)
	return job
}

// newBinderJob builds the job whose pod makes a WaitForFirstConsumer claim bind: the scheduler picks
// a node for it and the provisioner then creates the volume. It mounts the claim (or maps it, for
// Block claims) so that the volume is also staged once before it is handed out.
func newBinderJob(claim *corev1.PersistentVolumeClaim, options *Options) *batchv1.Job {
	// The pod only has to be scheduled and started: it runs as nobody with nothing allowed, so that
	// it is admitted under the restricted Pod Security Standard too.
	container := corev1.Container{
		Name:            "bind",
		Image:           options.BinderImage,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         append([]string(nil), options.BinderCommand...),
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
	if claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == corev1.PersistentVolumeBlock {
		container.VolumeDevices = []corev1.VolumeDevice{{Name: binderVolumeName, DevicePath: binderDevicePath}}
	} else {
		container.VolumeMounts = []corev1.VolumeMount{{Name: binderVolumeName, MountPath: binderMountPath}}
	}
	readOnly := len(claim.Spec.AccessModes) == 1 && claim.Spec.AccessModes[0] == corev1.ReadOnlyMany
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{
			Name:      jobName(claim.Name, jobRoleBind),
			Namespace: claim.Namespace,
			Labels: map[string]string{
				LabelJobRole: jobRoleBind,
				LabelReplica: replicaLabel(claim.Name),
			},
			OwnerReferences: []metav1.OwnerReference{claimOwnerReference(claim)},
		},
		Spec: batchv1.JobSpec{
			BackoffLimit:          ptr.To(binderBackoff),
			ActiveDeadlineSeconds: ptr.To(binderDeadline),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels: map[string]string{LabelJobRole: jobRoleBind},
				},
				Spec: corev1.PodSpec{
					RestartPolicy:                 corev1.RestartPolicyNever,
					TerminationGracePeriodSeconds: ptr.To(int64(0)),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						RunAsUser:      ptr.To(nobody),
						RunAsGroup:     ptr.To(nobody),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{container},
				},
			},
		},
	}
	setClaimVolume(&job.Spec.Template.Spec, binderVolumeName, claim.Name)
	if readOnly {
		job.Spec.Template.Spec.Volumes[0].PersistentVolumeClaim.ReadOnly = true
	}
	return job
}

// setClaimVolume makes the pod volume volumeName the claim, replacing any source the template gave
// it (validation allows only a claim there, whose name the template cannot know).
func setClaimVolume(podSpec *corev1.PodSpec, volumeName, claimName string) {
	source := corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimName},
	}
	for i := range podSpec.Volumes {
		if podSpec.Volumes[i].Name == volumeName {
			if old := podSpec.Volumes[i].PersistentVolumeClaim; old != nil {
				source.PersistentVolumeClaim.ReadOnly = old.ReadOnly
			}
			podSpec.Volumes[i].VolumeSource = source
			return
		}
	}
	podSpec.Volumes = append(podSpec.Volumes, corev1.Volume{Name: volumeName, VolumeSource: source})
}

type jobState int

const (
	jobMissing jobState = iota
	jobRunning
	jobSucceeded
	jobFailed
	// jobForeign is a job with the expected name that belongs to another claim, e.g. an earlier
	// claim of the same name whose job the garbage collector has not removed yet.
	jobForeign
)

func (c *Controller) jobFor(claim *corev1.PersistentVolumeClaim, role string) (*batchv1.Job, jobState) {
	job, err := c.jobLister.Jobs(claim.Namespace).Get(jobName(claim.Name, role))
	if err != nil {
		return nil, jobMissing
	}
	if owner := metav1.GetControllerOf(job); owner == nil || owner.UID != claim.UID {
		return job, jobForeign
	}
	switch {
	case jobCondition(job, batchv1.JobComplete):
		return job, jobSucceeded
	case jobCondition(job, batchv1.JobFailed):
		return job, jobFailed
	default:
		return job, jobRunning
	}
}

func jobCondition(job *batchv1.Job, conditionType batchv1.JobConditionType) bool {
	for _, condition := range job.Status.Conditions {
		if condition.Type == conditionType && condition.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// jobFailure describes why job failed, from its Failed condition.
func jobFailure(job *batchv1.Job) string {
	for _, condition := range job.Status.Conditions {
		if condition.Type == batchv1.JobFailed && condition.Status == corev1.ConditionTrue {
			return fmt.Sprintf("job %s failed: %s: %s", job.Name, condition.Reason, condition.Message)
		}
	}
	return fmt.Sprintf("job %s failed", job.Name)
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+2)
	for k, v := range m {
		out[k] = v
	}
	return out
}
