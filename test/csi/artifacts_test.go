// Package csi_test checks the deployable manifests of the CSI plugin.
package csi_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

const driverName = "subprovisioner.gitlab.io"

// decodeAll strictly decodes every document of the YAML files matching pattern into typed objects.
func decodeAll(t *testing.T, pattern string) []runtime.Object {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests match %s: %v", pattern, err)
	}
	codecs := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)
	var objs []runtime.Object
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
		for {
			doc, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			obj, _, err := codecs.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				if strings.Contains(err.Error(), "no kind \"VolumeSnapshotClass\"") {
					continue // snapshot API types are not in client-go's scheme
				}
				t.Fatalf("%s: %v", f, err)
			}
			objs = append(objs, obj)
		}
	}
	return objs
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func TestManifests(t *testing.T) {
	objs := decodeAll(t, "../../artifacts/csi/*.yaml")
	var (
		driver     *storagev1.CSIDriver
		deployment *appsv1.Deployment
		daemonSet  *appsv1.DaemonSet
		classes    []string
	)
	for _, o := range objs {
		switch o := o.(type) {
		case *storagev1.CSIDriver:
			driver = o
		case *appsv1.Deployment:
			deployment = o
		case *appsv1.DaemonSet:
			daemonSet = o
		case *storagev1.StorageClass:
			if o.Provisioner != driverName {
				t.Errorf("StorageClass %s provisioner = %s", o.Name, o.Provisioner)
			}
			for k := range o.Parameters {
				if !slices.Contains([]string{"backingClaimName", "backingClaimNamespace", "basePath"}, k) {
					t.Errorf("StorageClass %s has parameter %s the plugin rejects", o.Name, k)
				}
			}
			classes = append(classes, o.Name)
		}
	}
	if driver == nil || driver.Name != driverName || driver.Spec.AttachRequired == nil || *driver.Spec.AttachRequired {
		t.Errorf("CSIDriver = %+v", driver)
	}
	if !slices.Contains(classes, "local-path") {
		t.Errorf("no local-path StorageClass: %v", classes)
	}
	if deployment == nil || daemonSet == nil {
		t.Fatalf("missing controller Deployment or node DaemonSet")
	}
	var sidecars []string
	for _, c := range deployment.Spec.Template.Spec.Containers {
		sidecars = append(sidecars, c.Name)
		if c.Name != "pvpool-csi" && !slices.Contains(c.Args, "--csi-address=/csi/csi.sock") {
			t.Errorf("sidecar %s does not talk to the plugin's socket: %v", c.Name, c.Args)
		}
	}
	for _, want := range []string{"pvpool-csi", "csi-provisioner", "csi-resizer", "csi-snapshotter"} {
		if !slices.Contains(sidecars, want) {
			t.Errorf("controller lacks %s", want)
		}
	}
	node := daemonSet.Spec.Template.Spec.Containers[0]
	if node.SecurityContext == nil || node.SecurityContext.Privileged == nil || !*node.SecurityContext.Privileged {
		t.Error("node plugin is not privileged")
	}
	var bidirectional bool
	for _, m := range node.VolumeMounts {
		if m.MountPath == "/var/lib/kubelet" && m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			bidirectional = true
		}
	}
	if !bidirectional {
		t.Error("node plugin does not mount /var/lib/kubelet with Bidirectional propagation")
	}
	if !slices.Contains(node.Args, "--kubelet-registration-dir=/var/lib/kubelet/plugins_registry") {
		t.Error("node plugin does not register with kubelet")
	}
	decodeAll(t, "../../artifacts/csi/samples/*.yaml")
}
