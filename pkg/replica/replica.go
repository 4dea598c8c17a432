// Package replica is the contract between the pool controller, which makes replica claims ready, and
// the handout, which takes them: which claims belong to a pool, which are available, which are taken.
// Everything is recorded on the claims and volumes themselves so that any apiserver replica, or the
// same one after a crash, reads the same state.
package replica

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pvpool/pvpool/pkg/apis/pvpool/v1alpha1"
)

const (
	// AnnotationAvailable is set to "true" on a replica claim by the pool controller once the claim is
	// Bound and its init job, if the pool has one, succeeded. Only such claims are handed out.
	AnnotationAvailable = "pvpool.puppet.com/available"

	// AnnotationCheckout names the checkout ("<namespace>/<name>/<uid>") a replica claim, and then its
	// volume, is being handed to. Written with an optimistic-concurrency update before anything else
	// happens, it is what makes a volume go to one checkout only.
	AnnotationCheckout = "pvpool.puppet.com/checkout"

	// AnnotationOriginalReclaimPolicy keeps a volume's reclaim policy while the handout holds it at
	// Retain, so that deleting the replica claim does not delete the volume.
	AnnotationOriginalReclaimPolicy = "pvpool.puppet.com/original-reclaim-policy"

	// LabelCheckoutUID is set on a replica claim taken, and then on its volume, while they are being
	// handed out, so that an interrupted handout finds them again, and one whose checkout is gone
	// gives them back.
	LabelCheckoutUID = "pvpool.puppet.com/checkout-uid"
)

// OwnedBy tells whether claim is a replica of pool: the pool is its controller. Two pools with the same
// selector therefore never take each other's claims.
func OwnedBy(pool *v1alpha1.Pool, claim *corev1.PersistentVolumeClaim) bool {
	owner := metav1.GetControllerOf(claim)
	return owner != nil && owner.UID == pool.UID
}

// IsTaken tells whether a handout has started on claim.
func IsTaken(claim *corev1.PersistentVolumeClaim) bool {
	_, taken := claim.Annotations[AnnotationCheckout]
	return taken
}

// IsAvailable tells whether claim may be handed out now.
func IsAvailable(claim *corev1.PersistentVolumeClaim) bool {
	return claim.DeletionTimestamp == nil &&
		claim.Status.Phase == corev1.ClaimBound &&
		claim.Spec.VolumeName != "" &&
		claim.Annotations[AnnotationAvailable] == "true" &&
		!IsTaken(claim)
}

// CheckoutKey is the value of AnnotationCheckout for a checkout.
func CheckoutKey(namespace, name string, uid types.UID) string {
	return namespace + "/" + name + "/" + string(uid)
}

// SortOldestFirst orders claims by creation time, then name, so every caller picks the same one first.
func SortOldestFirst(claims []*corev1.PersistentVolumeClaim) {
	sort.Slice(claims, func(i, j int) bool {
		ti, tj := claims[i].CreationTimestamp, claims[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return claims[i].Name < claims[j].Name
	})
}
