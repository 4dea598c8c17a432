package csi

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func TestStripSecrets(t *testing.T) {
	req := &csi.CreateVolumeRequest{
		Name:       "v",
		Parameters: map[string]string{"basePath": "volumes"},
		Secrets:    map[string]string{"password": "hunter2"},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "s"}}},
	}
	out := stripSecrets(req).(sanitizedMessage).String()
	if strings.Contains(out, "hunter2") {
		t.Errorf("secret leaked: %s", out)
	}
	if !strings.Contains(out, "stripped") || !strings.Contains(out, "volumes") || !strings.Contains(out, `"password"`) {
		t.Errorf("sanitized message lost non-secret data: %s", out)
	}
	if req.Secrets["password"] != "hunter2" {
		t.Error("stripping modified the request itself")
	}
	nested := &csi.NodeStageVolumeRequest{VolumeId: "x", Secrets: map[string]string{"k": "topsecret"}}
	if out := stripSecrets(nested).(sanitizedMessage).String(); strings.Contains(out, "topsecret") {
		t.Errorf("secret leaked: %s", out)
	}
}
