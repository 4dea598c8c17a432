package csi

import (
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestClaimLocator(t *testing.T) {
	ctx := t.Context()
	client := fake.NewSimpleClientset(
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "backing-pvc"},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-local"}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-local"}, Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/srv/backing"}}}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "pending"}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "nfs"},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-nfs"}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-nfs"}, Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{NFS: &corev1.NFSVolumeSource{Server: "x", Path: "/"}}}},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: DefaultDriverName,
			Parameters: map[string]string{"backingClaimName": "backing-pvc", "backingClaimNamespace": "default"}},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "other"}, Provisioner: "other.csi",
			Parameters: map[string]string{"backingClaimName": "nfs", "backingClaimNamespace": "ns"}},
	)
	cache := filepath.Join(t.TempDir(), "claims.json")
	l := &ClaimLocator{Client: client, HostRoot: "/host", DriverName: DefaultDriverName, Fallback: "/fallback", CacheFile: cache}
	dir, err := l.Root(ctx, BackingClaim{Namespace: "default", Name: "backing-pvc"})
	if err != nil || dir != "/host/srv/backing" {
		t.Errorf("Root = %q, %v", dir, err)
	}
	if dir, err := l.Root(ctx, BackingClaim{}); err != nil || dir != "/fallback" {
		t.Errorf("Root of no claim = %q, %v", dir, err)
	}
	for _, c := range []BackingClaim{{Namespace: "default", Name: "pending"}, {Namespace: "ns", Name: "nfs"}, {Namespace: "x", Name: "missing"}} {
		if _, err := l.Root(ctx, c); err == nil {
			t.Errorf("Root(%v) succeeded", c)
		}
	}
	// Once resolved, a claim stays reachable after it is deleted (its volumes must still be deletable).
	if err := client.CoreV1().PersistentVolumeClaims("default").Delete(ctx, "backing-pvc", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if dir, err := l.Root(ctx, BackingClaim{Namespace: "default", Name: "backing-pvc"}); err != nil || dir != "/host/srv/backing" {
		t.Errorf("Root after claim deletion = %q, %v", dir, err)
	}
	// So does a restarted plugin, through the cache file.
	restarted := &ClaimLocator{Client: client, HostRoot: "/host", DriverName: DefaultDriverName, CacheFile: cache}
	if dir, err := restarted.Root(ctx, BackingClaim{Namespace: "default", Name: "backing-pvc"}); err != nil || dir != "/host/srv/backing" {
		t.Errorf("Root after restart = %q, %v", dir, err)
	}
	roots, err := l.Roots(ctx)
	if err != nil || len(roots) != 2 || roots[0] != "/fallback" || roots[1] != "/host/srv/backing" {
		t.Errorf("Roots = %v, %v", roots, err)
	}
}
