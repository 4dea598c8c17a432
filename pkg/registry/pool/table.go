package pool

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
	"github.com/pvpool/pvpool/pkg/registry/table"
)

var columns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name", Description: "Name of the pool."},
	{Name: "Replicas", Type: "integer", Description: "Number of volumes the pool is asked to keep ready."},
	{Name: "Available", Type: "integer", Description: "Number of volumes ready to be checked out."},
	{Name: "Age", Type: "string", Description: "Time since the pool was created."},
	{Name: "Selector", Type: "string", Priority: 1, Description: "Label selector of the pool's claims."},
	{Name: "Settled", Type: "string", Priority: 1, Description: "Reason of the Settlement condition."},
}

// TableConvertor prints Pools for kubectl get.
type TableConvertor struct{}

func (TableConvertor) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	converted, err := table.Convert(object, columns, func(obj runtime.Object) ([]interface{}, error) {
		pool := obj.(*pvpool.Pool)
		var replicas int64
		if pool.Spec.Replicas != nil {
			replicas = int64(*pool.Spec.Replicas)
		}
		settled := "<unknown>"
		for _, condition := range pool.Status.Conditions {
			if condition.Type == pvpool.PoolSettlement && condition.Reason != "" {
				settled = condition.Reason
			}
		}
		return []interface{}{
			pool.Name,
			replicas,
			int64(pool.Status.AvailableReplicas),
			table.Age(pool.CreationTimestamp),
			metav1.FormatLabelSelector(pool.Spec.Selector),
			settled,
		}, nil
	})
	return table.ApplyOptions(converted, tableOptions), err
}
