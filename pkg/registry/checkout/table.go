package checkout

import (
	"context"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/registry/table"
)

var columns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name", Description: "Name of the checkout."},
	{Name: "Pool", Type: "string", Description: "Namespace and name of the pool the volume comes from."},
	{Name: "Claim", Type: "string", Description: "Claim the volume is handed out as."},
	{Name: "Acquired", Type: "string", Description: "Reason of the Acquired condition."},
	{Name: "Age", Type: "string", Description: "Time since the checkout was created."},
	{Name: "Volume", Type: "string", Priority: 1, Description: "PersistentVolume handed out."},
	{Name: "Access Modes", Type: "string", Priority: 1, Description: "Access modes of the claim."},
}

// TableConvertor prints Checkouts for kubectl get.
type TableConvertor struct{}

func (TableConvertor) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	converted, err := table.Convert(object, columns, func(obj runtime.Object) ([]interface{}, error) {
		checkout := obj.(*pvpool.Checkout)
		acquired := "<unknown>"
		for _, condition := range checkout.Status.Conditions {
			if condition.Type == pvpool.CheckoutAcquired && condition.Reason != "" {
				acquired = condition.Reason
			}
		}
		modes := make([]string, 0, len(checkout.Spec.AccessModes))
		for _, mode := range checkout.Spec.AccessModes {
			modes = append(modes, string(mode))
		}
		return []interface{}{
			checkout.Name,
			PoolNamespace(checkout) + "/" + checkout.Spec.PoolRef.Name,
			orNone(checkout.Status.VolumeClaimRef.Name),
			acquired,
			table.Age(checkout.CreationTimestamp),
			orNone(checkout.Status.VolumeName),
			strings.Join(modes, ","),
		}, nil
	})
	return table.ApplyOptions(converted, tableOptions), err
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
