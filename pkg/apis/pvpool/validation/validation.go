// Package validation checks Pools and Checkouts, returning errors with the field paths of the
// versioned API so that kubectl can point at the offending field.
package validation

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
)

var (
	supportedAccessModes = sets.New(
		corev1.ReadWriteOnce, corev1.ReadOnlyMany, corev1.ReadWriteMany, corev1.ReadWriteOncePod)
	supportedVolumeModes  = sets.New(corev1.PersistentVolumeBlock, corev1.PersistentVolumeFilesystem)
	supportedCondStatuses = sets.New(corev1.ConditionTrue, corev1.ConditionFalse, corev1.ConditionUnknown)
	poolConditionTypes    = sets.New(pvpool.PoolAvailable, pvpool.PoolSettlement)
	checkoutCondTypes     = sets.New(pvpool.CheckoutAcquired)
)

// ValidatePool validates a Pool on create.
func ValidatePool(pool *pvpool.Pool) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMeta(&pool.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	allErrs = append(allErrs, ValidatePoolSpec(&pool.Spec, field.NewPath("spec"))...)
	return allErrs
}

// ValidatePoolUpdate validates a change to a Pool's metadata or spec.
func ValidatePoolUpdate(pool, old *pvpool.Pool) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMetaUpdate(&pool.ObjectMeta, &old.ObjectMeta, field.NewPath("metadata"))
	allErrs = append(allErrs, ValidatePoolSpec(&pool.Spec, field.NewPath("spec"))...)
	if !apiequality.Semantic.DeepEqual(pool.Spec.Selector, old.Spec.Selector) {
		allErrs = append(allErrs, field.Invalid(field.NewPath("spec", "selector"), pool.Spec.Selector, "field is immutable"))
	}
	return allErrs
}

// ValidatePoolStatusUpdate validates a change to a Pool's status.
func ValidatePoolStatusUpdate(pool, old *pvpool.Pool) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMetaUpdate(&pool.ObjectMeta, &old.ObjectMeta, field.NewPath("metadata"))
	allErrs = append(allErrs, validatePoolStatus(&pool.Status, field.NewPath("status"))...)
	return allErrs
}

// ValidatePoolSpec validates the desired state of a Pool.
func ValidatePoolSpec(spec *pvpool.PoolSpec, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if spec.Replicas == nil {
		allErrs = append(allErrs, field.Required(fldPath.Child("replicas"), ""))
	} else {
		allErrs = append(allErrs, apivalidation.ValidateNonnegativeField(int64(*spec.Replicas), fldPath.Child("replicas"))...)
	}

	templatePath := fldPath.Child("template")
	allErrs = append(allErrs, validateTemplateMetadata(&spec.Template.ObjectMeta, templatePath.Child("metadata"))...)
	allErrs = append(allErrs, validateSelector(spec.Selector, spec.Template.Labels, fldPath.Child("selector"), templatePath.Child("metadata", "labels"))...)
	allErrs = append(allErrs, validateClaimSpec(&spec.Template.Spec, templatePath.Child("spec"))...)

	if spec.InitJob != nil {
		allErrs = append(allErrs, validateMountJob(spec.InitJob, fldPath.Child("initJob"))...)
	}
	return allErrs
}

func validateSelector(selector *metav1.LabelSelector, templateLabels map[string]string, fldPath, labelsPath *field.Path) field.ErrorList {
	if selector == nil {
		return field.ErrorList{field.Required(fldPath, "")}
	}
	allErrs := metav1validation.ValidateLabelSelector(selector, metav1validation.LabelSelectorValidationOptions{}, fldPath)
	if len(selector.MatchLabels)+len(selector.MatchExpressions) == 0 {
		// An empty selector matches every claim in the namespace: the pool would adopt claims it
		// does not own.
		allErrs = append(allErrs, field.Invalid(fldPath, selector, "empty selector is invalid for a pool"))
	}
	if len(allErrs) > 0 {
		return allErrs
	}
	parsed, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		return append(allErrs, field.Invalid(fldPath, selector, err.Error()))
	}
	if !parsed.Matches(labels.Set(templateLabels)) {
		allErrs = append(allErrs, field.Invalid(labelsPath, templateLabels, "`selector` does not match template `labels`"))
	}
	return allErrs
}

func validateTemplateMetadata(meta *metav1.ObjectMeta, fldPath *field.Path) field.ErrorList {
	allErrs := metav1validation.ValidateLabels(meta.Labels, fldPath.Child("labels"))
	allErrs = append(allErrs, apivalidation.ValidateAnnotations(meta.Annotations, fldPath.Child("annotations"))...)
	return allErrs
}

func validateClaimSpec(spec *corev1.PersistentVolumeClaimSpec, fldPath *field.Path) field.ErrorList {
	allErrs := validateAccessModes(spec.AccessModes, fldPath.Child("accessModes"))
	if spec.VolumeMode != nil && !supportedVolumeModes.Has(*spec.VolumeMode) {
		allErrs = append(allErrs, field.NotSupported(fldPath.Child("volumeMode"), *spec.VolumeMode, sets.List(supportedVolumeModes)))
	}
	storagePath := fldPath.Child("resources", "requests").Key(string(corev1.ResourceStorage))
	if storage, ok := spec.Resources.Requests[corev1.ResourceStorage]; !ok {
		allErrs = append(allErrs, field.Required(storagePath, ""))
	} else if storage.Sign() <= 0 {
		allErrs = append(allErrs, field.Invalid(storagePath, storage.String(), "must be greater than zero"))
	}
	if spec.StorageClassName != nil && *spec.StorageClassName != "" {
		for _, msg := range utilvalidation.IsDNS1123Subdomain(*spec.StorageClassName) {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("storageClassName"), *spec.StorageClassName, msg))
		}
	}
	if spec.VolumeName != "" {
		// Every replica is a distinct volume; one named volume cannot back several of them.
		allErrs = append(allErrs, field.Forbidden(fldPath.Child("volumeName"), "a pool's replicas cannot all bind one named volume"))
	}
	return allErrs
}

func validateAccessModes(modes []corev1.PersistentVolumeAccessMode, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if len(modes) == 0 {
		return append(allErrs, field.Required(fldPath, "at least 1 access mode is required"))
	}
	seen := sets.New[corev1.PersistentVolumeAccessMode]()
	for i, mode := range modes {
		if !supportedAccessModes.Has(mode) {
			allErrs = append(allErrs, field.NotSupported(fldPath.Index(i), mode, sets.List(supportedAccessModes)))
		}
		if seen.Has(mode) {
			allErrs = append(allErrs, field.Duplicate(fldPath.Index(i), mode))
		}
		seen.Insert(mode)
	}
	if seen.Has(corev1.ReadWriteOncePod) && len(modes) > 1 {
		allErrs = append(allErrs, field.Forbidden(fldPath, "may not use ReadWriteOncePod with other access modes"))
	}
	return allErrs
}

func validateMountJob(job *pvpool.MountJob, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	volumeNamePath := fldPath.Child("volumeName")
	if job.VolumeName == "" {
		allErrs = append(allErrs, field.Required(volumeNamePath, ""))
	} else {
		for _, msg := range utilvalidation.IsDNS1123Label(job.VolumeName) {
			allErrs = append(allErrs, field.Invalid(volumeNamePath, job.VolumeName, msg))
		}
	}

	templatePath := fldPath.Child("template")
	allErrs = append(allErrs, validateTemplateMetadata(&job.Template.ObjectMeta, templatePath.Child("metadata"))...)
	jobSpec := &job.Template.Spec
	jobSpecPath := templatePath.Child("spec")
	if jobSpec.BackoffLimit != nil {
		allErrs = append(allErrs, validateRange(int64(*jobSpec.BackoffLimit), 0, int64(pvpool.MaxInitJobBackoffLimit), jobSpecPath.Child("backoffLimit"))...)
	}
	if jobSpec.ActiveDeadlineSeconds != nil {
		allErrs = append(allErrs, validateRange(*jobSpec.ActiveDeadlineSeconds, 1, pvpool.MaxInitJobActiveDeadlineSeconds, jobSpecPath.Child("activeDeadlineSeconds"))...)
	}
	if jobSpec.Selector != nil || jobSpec.ManualSelector != nil {
		allErrs = append(allErrs, field.Forbidden(jobSpecPath.Child("selector"), "the pool controller owns the init job's selector"))
	}

	podPath := jobSpecPath.Child("template", "spec")
	podSpec := &jobSpec.Template.Spec
	allErrs = append(allErrs, validateTemplateMetadata(&jobSpec.Template.ObjectMeta, jobSpecPath.Child("template", "metadata"))...)
	if podSpec.RestartPolicy != "" && podSpec.RestartPolicy != corev1.RestartPolicyNever {
		allErrs = append(allErrs, field.NotSupported(podPath.Child("restartPolicy"), podSpec.RestartPolicy, []corev1.RestartPolicy{corev1.RestartPolicyNever}))
	}
	if len(podSpec.Containers) == 0 {
		allErrs = append(allErrs, field.Required(podPath.Child("containers"), "an init job needs at least one container"))
	}
	for i, container := range podSpec.Containers {
		containerPath := podPath.Child("containers").Index(i)
		if container.Name == "" {
			allErrs = append(allErrs, field.Required(containerPath.Child("name"), ""))
		}
		if container.Image == "" {
			allErrs = append(allErrs, field.Required(containerPath.Child("image"), ""))
		}
	}
	for i, volume := range podSpec.Volumes {
		if volume.Name != job.VolumeName {
			continue
		}
		// The controller fills this volume with the replica's claim; any other source would be
		// silently replaced.
		if !onlyClaimSource(volume.VolumeSource) {
			allErrs = append(allErrs, field.Invalid(podPath.Child("volumes").Index(i), volume.Name,
				fmt.Sprintf("volume %q is the init job's volume and may only be a persistentVolumeClaim", job.VolumeName)))
		}
	}
	return allErrs
}

func onlyClaimSource(source corev1.VolumeSource) bool {
	withoutClaim := source
	withoutClaim.PersistentVolumeClaim = nil
	return apiequality.Semantic.DeepEqual(withoutClaim, corev1.VolumeSource{})
}

func validateRange(value, minimum, maximum int64, fldPath *field.Path) field.ErrorList {
	if value < minimum || value > maximum {
		return field.ErrorList{field.Invalid(fldPath, value, fmt.Sprintf("must be between %d and %d, inclusive", minimum, maximum))}
	}
	return nil
}

func validatePoolStatus(status *pvpool.PoolStatus, fldPath *field.Path) field.ErrorList {
	allErrs := apivalidation.ValidateNonnegativeField(status.ObservedGeneration, fldPath.Child("observedGeneration"))
	allErrs = append(allErrs, apivalidation.ValidateNonnegativeField(int64(status.Replicas), fldPath.Child("replicas"))...)
	allErrs = append(allErrs, apivalidation.ValidateNonnegativeField(int64(status.AvailableReplicas), fldPath.Child("availableReplicas"))...)
	if status.AvailableReplicas > status.Replicas {
		allErrs = append(allErrs, field.Invalid(fldPath.Child("availableReplicas"), status.AvailableReplicas, "cannot be greater than status.replicas"))
	}
	seen := sets.New[pvpool.PoolConditionType]()
	for i, condition := range status.Conditions {
		conditionPath := fldPath.Child("conditions").Index(i)
		allErrs = append(allErrs, validateCondition(string(condition.Type), condition.Status, condition.Reason,
			poolConditionTypes.Has(condition.Type), sets.List(poolConditionTypes), seen.Has(condition.Type), conditionPath)...)
		seen.Insert(condition.Type)
	}
	return allErrs
}

func validateCondition[T ~string](conditionType string, status corev1.ConditionStatus, reason string, known bool, knownTypes []T, duplicate bool, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if !known {
		allErrs = append(allErrs, field.NotSupported(fldPath.Child("type"), conditionType, knownTypes))
	}
	if duplicate {
		allErrs = append(allErrs, field.Duplicate(fldPath.Child("type"), conditionType))
	}
	if !supportedCondStatuses.Has(status) {
		allErrs = append(allErrs, field.NotSupported(fldPath.Child("status"), status, sets.List(supportedCondStatuses)))
	}
	if reason != "" {
		for _, msg := range utilvalidation.IsQualifiedName(reason) {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("reason"), reason, msg))
		}
	}
	return allErrs
}

// ValidateCheckout validates a Checkout on create.
func ValidateCheckout(checkout *pvpool.Checkout) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMeta(&checkout.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	allErrs = append(allErrs, ValidateCheckoutSpec(&checkout.Spec, field.NewPath("spec"))...)
	return allErrs
}

// ValidateCheckoutUpdate validates a change to a Checkout's metadata or spec. Once a volume has been
// handed out the spec is fixed: a different pool, claim or access mode would describe a claim that
// no longer matches the one the checkout holds.
func ValidateCheckoutUpdate(checkout, old *pvpool.Checkout) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMetaUpdate(&checkout.ObjectMeta, &old.ObjectMeta, field.NewPath("metadata"))
	specPath := field.NewPath("spec")
	allErrs = append(allErrs, ValidateCheckoutSpec(&checkout.Spec, specPath)...)
	if old.Status.VolumeName == "" {
		return allErrs
	}
	const immutable = "field is immutable once status.volumeName is set"
	if checkout.Spec.PoolRef != old.Spec.PoolRef {
		allErrs = append(allErrs, field.Invalid(specPath.Child("poolRef"), checkout.Spec.PoolRef, immutable))
	}
	if checkout.Spec.ClaimName != old.Spec.ClaimName {
		allErrs = append(allErrs, field.Invalid(specPath.Child("claimName"), checkout.Spec.ClaimName, immutable))
	}
	if !apiequality.Semantic.DeepEqual(checkout.Spec.AccessModes, old.Spec.AccessModes) {
		allErrs = append(allErrs, field.Invalid(specPath.Child("accessModes"), checkout.Spec.AccessModes, immutable))
	}
	return allErrs
}

// ValidateCheckoutStatusUpdate validates a change to a Checkout's status.
func ValidateCheckoutStatusUpdate(checkout, old *pvpool.Checkout) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMetaUpdate(&checkout.ObjectMeta, &old.ObjectMeta, field.NewPath("metadata"))
	statusPath := field.NewPath("status")
	status := &checkout.Status
	if status.VolumeName != "" {
		for _, msg := range utilvalidation.IsDNS1123Subdomain(status.VolumeName) {
			allErrs = append(allErrs, field.Invalid(statusPath.Child("volumeName"), status.VolumeName, msg))
		}
	}
	if status.VolumeClaimRef.Name != "" {
		for _, msg := range utilvalidation.IsDNS1123Subdomain(status.VolumeClaimRef.Name) {
			allErrs = append(allErrs, field.Invalid(statusPath.Child("volumeClaimRef", "name"), status.VolumeClaimRef.Name, msg))
		}
	}
	seen := sets.New[pvpool.CheckoutConditionType]()
	for i, condition := range status.Conditions {
		allErrs = append(allErrs, validateCondition(string(condition.Type), condition.Status, condition.Reason,
			checkoutCondTypes.Has(condition.Type), sets.List(checkoutCondTypes), seen.Has(condition.Type), statusPath.Child("conditions").Index(i))...)
		seen.Insert(condition.Type)
	}
	return allErrs
}

// ValidateCheckoutSpec validates the desired state of a Checkout.
func ValidateCheckoutSpec(spec *pvpool.CheckoutSpec, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	poolRefPath := fldPath.Child("poolRef")
	if spec.PoolRef.Name == "" {
		allErrs = append(allErrs, field.Required(poolRefPath.Child("name"), ""))
	} else {
		for _, msg := range apivalidation.NameIsDNSSubdomain(spec.PoolRef.Name, false) {
			allErrs = append(allErrs, field.Invalid(poolRefPath.Child("name"), spec.PoolRef.Name, msg))
		}
	}
	if spec.PoolRef.Namespace != "" {
		for _, msg := range apivalidation.ValidateNamespaceName(spec.PoolRef.Namespace, false) {
			allErrs = append(allErrs, field.Invalid(poolRefPath.Child("namespace"), spec.PoolRef.Namespace, msg))
		}
	}
	if spec.ClaimName != "" {
		for _, msg := range apivalidation.NameIsDNSSubdomain(spec.ClaimName, false) {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("claimName"), spec.ClaimName, msg))
		}
	}
	allErrs = append(allErrs, validateAccessModes(spec.AccessModes, fldPath.Child("accessModes"))...)
	return allErrs
}
