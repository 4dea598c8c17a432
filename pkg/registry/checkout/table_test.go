package checkout

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
	tbl, err := TableConvertor{}.ConvertToTable(context.Background(), testCheckout(), nil)
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
		{"Pool", "string", 0},
		{"Claim", "string", 0},
		{"Acquired", "string", 0},
		{"Age", "string", 0},
		{"Volume", "string", 1},
		{"Access Modes", "string", 1},
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
		name     string
		checkout func() *pvpool.Checkout
		want     []interface{}
	}{
		{
			name:     "checked out from a pool in another namespace",
			checkout: testCheckout,
			want:     []interface{}{"my-checkout", "storage/restricted-pool", "my-claim", "CheckedOut", "<unknown>", "pv-1", "ReadWriteOnce"},
		},
		{
			name: "waiting in its own namespace",
			checkout: func() *pvpool.Checkout {
				c := testCheckout()
				c.CreationTimestamp = created
				c.Spec.PoolRef.Namespace = ""
				c.Spec.ClaimName = ""
				c.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany, corev1.ReadWriteMany}
				c.Status = pvpool.CheckoutStatus{Conditions: []pvpool.CheckoutCondition{
					{Type: pvpool.CheckoutAcquired, Status: corev1.ConditionUnknown, Reason: pvpool.CheckoutAcquiredReasonNotAvailable},
				}}
				return c
			},
			want: []interface{}{"my-checkout", "restricted/restricted-pool", "<none>", "NotAvailable", "30d", "<none>", "ReadOnlyMany,ReadWriteMany"},
		},
		{
			name: "just created",
			checkout: func() *pvpool.Checkout {
				c := testCheckout()
				c.Status = pvpool.CheckoutStatus{}
				return c
			},
			want: []interface{}{"my-checkout", "storage/restricted-pool", "<none>", "<unknown>", "<unknown>", "<none>", "ReadWriteOnce"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkout := tc.checkout()
			tbl, err := TableConvertor{}.ConvertToTable(context.Background(), checkout, nil)
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
			if tbl.Rows[0].Object.Object != runtime.Object(checkout) {
				t.Errorf("row object = %v, want the checkout", tbl.Rows[0].Object.Object)
			}
			if tbl.ResourceVersion != "12" {
				t.Errorf("resourceVersion = %q, want the checkout's", tbl.ResourceVersion)
			}
		})
	}
}

func TestTableList(t *testing.T) {
	a, b := testCheckout(), testCheckout()
	b.Namespace, b.Name = "team-b", "other"
	b.Spec.PoolRef.Namespace = ""
	b.Status = pvpool.CheckoutStatus{Conditions: []pvpool.CheckoutCondition{
		{Type: pvpool.CheckoutAcquired, Status: corev1.ConditionUnknown, Reason: pvpool.CheckoutAcquiredReasonPoolDoesNotExist},
	}}
	list := &pvpool.CheckoutList{
		ListMeta: metav1.ListMeta{ResourceVersion: "31", Continue: "token", RemainingItemCount: ptr.To[int64](1)},
		Items:    []pvpool.Checkout{*a, *b},
	}
	tbl, err := TableConvertor{}.ConvertToTable(context.Background(), list, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tbl.ResourceVersion != "31" || tbl.Continue != "token" || tbl.RemainingItemCount == nil || *tbl.RemainingItemCount != 1 {
		t.Errorf("list metadata not carried over: %+v", tbl.ListMeta)
	}
	var got [][]interface{}
	for i, row := range tbl.Rows {
		got = append(got, row.Cells[:4])
		if row.Object.Object != runtime.Object(&list.Items[i]) {
			t.Errorf("row %d object is not item %d", i, i)
		}
	}
	want := [][]interface{}{
		{"my-checkout", "storage/restricted-pool", "my-claim", "CheckedOut"},
		{"other", "team-b/restricted-pool", "<none>", "PoolDoesNotExist"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
}
