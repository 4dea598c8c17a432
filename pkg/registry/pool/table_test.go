package pool

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
)

func TestTableColumns(t *testing.T) {
	tbl, err := TableConvertor{}.ConvertToTable(context.Background(), testPool(), nil)
	if err != nil {
		t.Fatal(err)
	}
	type column struct {
		Name     string
		Type     string
		Priority int32
	}
	var got []column
	for _, c := range tbl.ColumnDefinitions {
		got = append(got, column{c.Name, c.Type, c.Priority})
		if c.Description == "" {
			t.Errorf("column %s has no description", c.Name)
		}
	}
	want := []column{
		{"Name", "string", 0},
		{"Replicas", "integer", 0},
		{"Available", "integer", 0},
		{"Age", "string", 0},
		{"Selector", "string", 1},
		{"Settled", "string", 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("columns (-want +got):\n%s", diff)
	}
	if tbl.ColumnDefinitions[0].Format != "name" {
		t.Errorf("Name column format = %q, want name", tbl.ColumnDefinitions[0].Format)
	}
}

func TestTableCells(t *testing.T) {
	created := metav1.NewTime(time.Now().Add(-30 * 24 * time.Hour))
	tests := []struct {
		name string
		pool func() *pvpool.Pool
		want []interface{}
	}{
		{
			name: "new pool",
			pool: func() *pvpool.Pool {
				p := testPool()
				p.Status = pvpool.PoolStatus{}
				return p
			},
			want: []interface{}{"pool-a", int64(2), int64(0), "<unknown>", "app=a", "<unknown>"},
		},
		{
			name: "settled pool",
			pool: func() *pvpool.Pool {
				p := testPool()
				p.CreationTimestamp = created
				p.Spec.Replicas = ptr.To[int32](5)
				p.Spec.Selector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"fast"}}}
				p.Status = pvpool.PoolStatus{
					Replicas: 5, AvailableReplicas: 4,
					Conditions: []pvpool.PoolCondition{
						{Type: pvpool.PoolAvailable, Status: corev1.ConditionTrue, Reason: pvpool.PoolAvailableReasonMinimumReplicasAvailable},
						{Type: pvpool.PoolSettlement, Status: corev1.ConditionFalse, Reason: pvpool.PoolSettlementReasonInitJobFailed},
					},
				}
				return p
			},
			want: []interface{}{"pool-a", int64(5), int64(4), "30d", "app=a,tier in (fast)", "InitJobFailed"},
		},
		{
			name: "no replicas, no selector",
			pool: func() *pvpool.Pool {
				p := testPool()
				p.Spec.Replicas = nil
				p.Spec.Selector = nil
				p.Status = pvpool.PoolStatus{Conditions: []pvpool.PoolCondition{
					{Type: pvpool.PoolSettlement, Status: corev1.ConditionTrue, Reason: pvpool.PoolSettlementReasonSettled},
				}}
				return p
			},
			want: []interface{}{"pool-a", int64(0), int64(0), "<unknown>", "<none>", "Settled"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := tc.pool()
			tbl, err := TableConvertor{}.ConvertToTable(context.Background(), pool, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(tbl.Rows) != 1 {
				t.Fatalf("%d rows, want 1", len(tbl.Rows))
			}
			if diff := cmp.Diff(tc.want, tbl.Rows[0].Cells); diff != "" {
				t.Errorf("cells (-want +got):\n%s", diff)
			}
			if len(tbl.Rows[0].Cells) != len(tbl.ColumnDefinitions) {
				t.Errorf("%d cells for %d columns", len(tbl.Rows[0].Cells), len(tbl.ColumnDefinitions))
			}
			if tbl.Rows[0].Object.Object != runtime.Object(pool) {
				t.Errorf("row object = %v, want the pool", tbl.Rows[0].Object.Object)
			}
			if tbl.ResourceVersion != "7" {
				t.Errorf("resourceVersion = %q, want the pool's", tbl.ResourceVersion)
			}
		})
	}
}

func TestTableList(t *testing.T) {
	a, b := testPool(), testPool()
	b.Name = "pool-b"
	b.Status.AvailableReplicas = 2
	list := &pvpool.PoolList{
		ListMeta: metav1.ListMeta{ResourceVersion: "99", Continue: "next-page", RemainingItemCount: ptr.To[int64](3)},
		Items:    []pvpool.Pool{*a, *b},
	}
	tbl, err := TableConvertor{}.ConvertToTable(context.Background(), list, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tbl.ResourceVersion != "99" || tbl.Continue != "next-page" || tbl.RemainingItemCount == nil || *tbl.RemainingItemCount != 3 {
		t.Errorf("list metadata not carried over: %+v", tbl.ListMeta)
	}
	var names []interface{}
	var available []interface{}
	for i, row := range tbl.Rows {
		names = append(names, row.Cells[0])
		available = append(available, row.Cells[2])
		if row.Object.Object != runtime.Object(&list.Items[i]) {
			t.Errorf("row %d object is not item %d", i, i)
		}
	}
	if diff := cmp.Diff([]interface{}{"pool-a", "pool-b"}, names); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]interface{}{int64(1), int64(2)}, available); diff != "" {
		t.Errorf("available (-want +got):\n%s", diff)
	}

	empty, err := TableConvertor{}.ConvertToTable(context.Background(), &pvpool.PoolList{ListMeta: metav1.ListMeta{ResourceVersion: "5"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(empty.Rows) != 0 || len(empty.ColumnDefinitions) == 0 || empty.ResourceVersion != "5" {
		t.Errorf("empty list table: %+v", empty)
	}
}
