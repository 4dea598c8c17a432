package apiserver

import (
	"k8s.io/apimachinery/pkg/runtime"
)

const protobufMediaType = "application/vnd.kubernetes.protobuf"

// withoutProtobuf offers every media type of its serializer but protobuf. The pvpool types have no
// protobuf encoding, and clients that list protobuf first in Accept (kube-controller-manager's
// namespace and garbage collectors do) must be answered in JSON rather than with an encoding error,
// or namespaces holding pools or checkouts could never be deleted.
type withoutProtobuf struct {
	runtime.NegotiatedSerializer
}

func (s withoutProtobuf) SupportedMediaTypes() []runtime.SerializerInfo {
	var supported []runtime.SerializerInfo
	for _, info := range s.NegotiatedSerializer.SupportedMediaTypes() {
		if info.MediaType != protobufMediaType {
			supported = append(supported, info)
		}
	}
	return supported
}
