package csi

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestCapacityFor(t *testing.T) {
	cases := []struct {
		req, lim, min int64
		want          int64
		code          codes.Code
	}{
		{0, 0, 0, defaultVolumeSize, codes.OK},
		{1, 0, 0, mib, codes.OK},
		{mib + 1, 0, 0, 2 * mib, codes.OK},
		{0, 10 * mib, 0, 10 * mib, codes.OK},
		{1000, 1500, 0, 1024, codes.OK},
		{1000, 1010, 0, 0, codes.OutOfRange},
		{2 * mib, mib, 0, 0, codes.InvalidArgument},
		{-1, 0, 0, 0, codes.InvalidArgument},
		{mib, 0, 3 * mib, 3 * mib, codes.OK},
		{mib, 2 * mib, 3 * mib, 0, codes.OutOfRange},
	}
	for _, c := range cases {
		got, err := capacityFor(&csi.CapacityRange{RequiredBytes: c.req, LimitBytes: c.lim}, c.min)
		if status.Code(err) != c.code || got != c.want {
			t.Errorf("capacityFor(%d, %d, min %d) = %d, %v; want %d, %s", c.req, c.lim, c.min, got, err, c.want, c.code)
		}
	}
	if !capacityFits(2*mib, &csi.CapacityRange{RequiredBytes: mib}) || capacityFits(mib, &csi.CapacityRange{RequiredBytes: 2 * mib}) ||
		capacityFits(2*mib, &csi.CapacityRange{LimitBytes: mib}) {
		t.Error("capacityFits wrong")
	}
}

func TestParseParameters(t *testing.T) {
	loc, err := parseParameters(map[string]string{"backingClaimName": "backing-pvc", "backingClaimNamespace": "default",
		"basePath": "volumes", "csi.storage.k8s.io/pvc/name": "x"})
	if err != nil || loc.Claim.Name != "backing-pvc" || loc.Claim.Namespace != "default" || loc.BasePath != "volumes" {
		t.Errorf("loc = %+v, %v", loc, err)
	}
	for _, bad := range []map[string]string{
		{"foo": "bar"},
		{"basePath": "../escape"},
		{"basePath": "/abs"},
		{"backingClaimNamespace": "ns"},
		{"backingClaimName": "a~b"},
	} {
		if _, err := parseParameters(bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("parseParameters(%v) = %v, want InvalidArgument", bad, err)
		}
	}
}

func TestIDsRoundTrip(t *testing.T) {
	loc := location{Claim: BackingClaim{Namespace: "default", Name: "backing.pvc"}, BasePath: "a/b c"}
	for _, name := range []string{"pvc-123", "weird name/with slash", ""} {
		key := keyFor(name)
		id := encodeID(volumeIDPrefix, loc, key)
		gotLoc, gotKey, err := decodeID(volumeIDPrefix, id)
		if err != nil || gotLoc != loc || gotKey != key {
			t.Errorf("round trip of %q: %+v %q %v", name, gotLoc, gotKey, err)
		}
		if _, _, err := decodeID(snapshotIDPrefix, id); err == nil {
			t.Errorf("volume ID %q accepted as snapshot ID", id)
		}
	}
	if keyFor("a") == keyFor("b") || keyFor("x/y") == keyFor("x/z") {
		t.Error("keys collide")
	}
	for _, bad := range []string{"", "garbage", "v1~a~b~!!~k", "v1~a~b~Li4~k", "v1~a~b~~bad/key"} {
		if _, _, err := decodeID(volumeIDPrefix, bad); err == nil {
			t.Errorf("malformed ID %q accepted", bad)
		}
	}
}
