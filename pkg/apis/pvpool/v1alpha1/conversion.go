package v1alpha1

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
)

// Field selectors served for Checkouts, so controllers can find the checkouts of one pool or the
// holder of one volume without listing everything.
const (
	CheckoutPoolNameField      = "spec.poolRef.name"
	CheckoutPoolNamespaceField = "spec.poolRef.namespace"
	CheckoutClaimNameField     = "spec.claimName"
	CheckoutVolumeNameField    = "status.volumeName"
)

func addFieldLabelConversionFuncs(scheme *runtime.Scheme) error {
	return scheme.AddFieldLabelConversionFunc(SchemeGroupVersion.WithKind("Checkout"),
		func(label, value string) (string, string, error) {
			switch label {
			case "metadata.name", "metadata.namespace",
				CheckoutPoolNameField, CheckoutPoolNamespaceField, CheckoutClaimNameField, CheckoutVolumeNameField:
				return label, value, nil
			default:
				return "", "", fmt.Errorf("field label not supported: %s", label)
			}
		})
}
