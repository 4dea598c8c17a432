package install

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/apitesting/roundtrip"

	pvpoolfuzzer "github.com/pvpool/pvpool/pkg/apis/pvpool/fuzzer"
)

// TestRoundTripTypes fuzzes every internal kind, converts it to v1alpha1, serializes it, decodes it
// (with defaulting) and converts it back, failing on any difference.
func TestRoundTripTypes(t *testing.T) {
	roundtrip.RoundTripTestForAPIGroup(t, Install, pvpoolfuzzer.Funcs)
}
