package csi

import (
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// StorageClass parameters, named as Subprovisioner names them.
const (
	paramBackingClaimName      = "backingClaimName"
	paramBackingClaimNamespace = "backingClaimNamespace"
	paramBasePath              = "basePath"
	// Parameters with this prefix are added by the sidecars (PVC/PV names with --extra-create-metadata).
	sidecarParamPrefix = "csi.storage.k8s.io/"
)

func parseParameters(params map[string]string) (location, error) {
	var loc location
	for k, v := range params {
		switch k {
		case paramBackingClaimName:
			loc.Claim.Name = v
		case paramBackingClaimNamespace:
			loc.Claim.Namespace = v
		case paramBasePath:
			loc.BasePath = v
		default:
			if !strings.HasPrefix(k, sidecarParamPrefix) {
				return location{}, status.Errorf(codes.InvalidArgument, "unknown parameter %q (known: %s, %s, %s)",
					k, paramBackingClaimName, paramBackingClaimNamespace, paramBasePath)
			}
		}
	}
	if loc.Claim.Name != "" && loc.Claim.Namespace == "" {
		loc.Claim.Namespace = "default"
	}
	if loc.Claim.Name == "" && loc.Claim.Namespace != "" {
		return location{}, status.Errorf(codes.InvalidArgument, "%s requires %s", paramBackingClaimNamespace, paramBackingClaimName)
	}
	for _, v := range []string{loc.Claim.Name, loc.Claim.Namespace} {
		if strings.Contains(v, idSeparator) || strings.Contains(v, "/") {
			return location{}, status.Errorf(codes.InvalidArgument, "invalid backing claim %q", v)
		}
	}
	if err := validateBasePath(loc.BasePath); err != nil {
		return location{}, status.Error(codes.InvalidArgument, err.Error())
	}
	return loc, nil
}

const (
	mib               = int64(1) << 20
	defaultVolumeSize = int64(1) << 30
)

// capacityFor picks the size of a new volume: the required size (1 GiB if none) rounded up to whole MiB,
// within the limit.
func capacityFor(r *csi.CapacityRange, minimum int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "required bytes %d exceed limit bytes %d", req, lim)
	}
	if req < minimum {
		if lim > 0 && lim < minimum {
			return 0, status.Errorf(codes.OutOfRange, "limit bytes %d are smaller than the source's %d bytes", lim, minimum)
		}
		req = minimum
	}
	size := req
	if size == 0 {
		size = defaultVolumeSize
		if lim > 0 && lim < size {
			size = lim
		}
	}
	rounded := (size + mib - 1) / mib * mib
	if lim > 0 && rounded > lim {
		// Fall back to the finest size qcow2 accepts.
		rounded = (size + 511) / 512 * 512
		if rounded > lim {
			return 0, status.Errorf(codes.OutOfRange, "no size that is a multiple of 512 fits between %d and %d bytes", req, lim)
		}
	}
	return rounded, nil
}

// capacityFits says whether an existing volume of size satisfies r.
func capacityFits(size int64, r *csi.CapacityRange) bool {
	if r.GetRequiredBytes() > size {
		return false
	}
	return r.GetLimitBytes() == 0 || size <= r.GetLimitBytes()
}

var supportedFsTypes = map[string]bool{"": true, "ext4": true, "xfs": true}

// checkCapabilities returns an error describing the first unsupported capability, and whether any asks
// for the Mount access type.
func checkCapabilities(caps []*csi.VolumeCapability) (filesystem bool, err error) {
	if len(caps) == 0 {
		return false, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		switch {
		case c.GetBlock() != nil:
		case c.GetMount() != nil:
			filesystem = true
			if !supportedFsTypes[c.GetMount().GetFsType()] {
				return false, status.Errorf(codes.InvalidArgument, "unsupported filesystem type %q", c.GetMount().GetFsType())
			}
		default:
			return false, status.Error(codes.InvalidArgument, "access type must be block or mount")
		}
		switch c.GetAccessMode().GetMode() {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		default:
			return false, status.Errorf(codes.InvalidArgument, "unsupported access mode %s", c.GetAccessMode().GetMode())
		}
	}
	return filesystem, nil
}

func isReadOnlyMode(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return false
}
