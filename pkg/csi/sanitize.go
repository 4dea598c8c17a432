package csi

import (
	"encoding/json"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// stripSecrets returns a copy of msg, for logging, with every field the CSI spec marks csi_secret
// replaced by "***stripped***" (at any depth).
func stripSecrets(msg interface{}) interface{} {
	m, ok := msg.(proto.Message)
	if !ok || m == nil {
		return msg
	}
	clone := proto.Clone(m)
	stripMessage(clone.ProtoReflect())
	return sanitizedMessage{clone}
}

func stripMessage(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if isSecret(fd) {
			switch {
			case fd.IsMap():
				mp := m.Mutable(fd).Map()
				mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
					mp.Set(k, protoreflect.ValueOfString("***stripped***"))
					return true
				})
			case fd.Kind() == protoreflect.StringKind && !fd.IsList():
				m.Set(fd, protoreflect.ValueOfString("***stripped***"))
			default:
				m.Clear(fd)
			}
			return true
		}
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				stripMessage(l.Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				stripMessage(mv.Message())
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
			stripMessage(v.Message())
		}
		return true
	})
}

func isSecret(fd protoreflect.FieldDescriptor) bool {
	opts := fd.Options()
	if opts == nil {
		return false
	}
	secret, ok := proto.GetExtension(opts, csi.E_CsiSecret).(bool)
	return ok && secret
}

// sanitizedMessage prints as compact JSON in logs.
type sanitizedMessage struct{ m proto.Message }

func (s sanitizedMessage) String() string {
	raw, err := json.Marshal(s.m)
	if err != nil {
		return "<unprintable>"
	}
	return string(raw)
}

// MarshalLog makes klog's JSON format print the message, not the wrapper.
func (s sanitizedMessage) MarshalLog() interface{} { return s.m }
