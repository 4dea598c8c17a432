package table

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/pvpool/pvpool/pkg/apis/pvpool"
)

var testColumns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name"},
	{Name: "Replicas", Type: "integer"},
}

func nameAndReplicas(obj runtime.Object) ([]interface{}, error) {
	pool := obj.(*pvpool.Pool)
	if pool.Name == "broken" {
		return nil, errors.New("cannot print broken")
	}
	return []interface{}{pool.Name, int64(*pool.Spec.Replicas)}, nil
}

func pool(name string, replicas int32) pvpool.Pool {
	return pvpool.Pool{
		ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "3"},
		Spec:       pvpool.PoolSpec{Replicas: ptr.To(replicas)},
	}
}

func TestConvertObject(t *testing.T) {
	p := pool("a", 2)
	tbl, err := Convert(&p, testColumns, nameAndReplicas)
	if err != nil {
		t.Fatal(err)
	}
	want := &metav1.Table{
		ListMeta:          metav1.ListMeta{ResourceVersion: "3"},
		ColumnDefinitions: testColumns,
		Rows:              []metav1.TableRow{{Cells: []interface{}{"a", int64(2)}, Object: runtime.RawExtension{Object: &p}}},
	}
	if diff := cmp.Diff(want, tbl); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	if tbl.Rows[0].Object.Object != runtime.Object(&p) {
		t.Error("row object is not the converted object")
	}
}

func TestConvertList(t *testing.T) {
	list := &pvpool.PoolList{
		ListMeta: metav1.ListMeta{ResourceVersion: "40", Continue: "abc", RemainingItemCount: ptr.To[int64](7)},
		Items:    []pvpool.Pool{pool("a", 1), pool("b", 2), pool("c", 0)},
	}
	tbl, err := Convert(list, testColumns, nameAndReplicas)
	if err != nil {
		t.Fatal(err)
	}
	wantMeta := metav1.ListMeta{ResourceVersion: "40", Continue: "abc", RemainingItemCount: ptr.To[int64](7)}
	if diff := cmp.Diff(wantMeta, tbl.ListMeta); diff != "" {
		t.Errorf("list metadata (-want +got):\n%s", diff)
	}
	var cells [][]interface{}
	for i, row := range tbl.Rows {
		cells = append(cells, row.Cells)
		if row.Object.Object != runtime.Object(&list.Items[i]) {
			t.Errorf("row %d object is not item %d", i, i)
		}
	}
	wantCells := [][]interface{}{{"a", int64(1)}, {"b", int64(2)}, {"c", int64(0)}}
	if diff := cmp.Diff(wantCells, cells); diff != "" {
		t.Errorf("cells (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(testColumns, tbl.ColumnDefinitions); diff != "" {
		t.Errorf("columns (-want +got):\n%s", diff)
	}
}

func TestConvertEmptyList(t *testing.T) {
	tbl, err := Convert(&pvpool.PoolList{ListMeta: metav1.ListMeta{ResourceVersion: "8"}}, testColumns, nameAndReplicas)
	if err != nil {
		t.Fatal(err)
	}
	if len(tbl.Rows) != 0 || tbl.ResourceVersion != "8" || len(tbl.ColumnDefinitions) != len(testColumns) {
		t.Errorf("empty list table: %+v", tbl)
	}
}

func TestConvertErrors(t *testing.T) {
	broken := pool("broken", 1)
	if _, err := Convert(&broken, testColumns, nameAndReplicas); err == nil {
		t.Error("no error for an object whose cells fail")
	}
	list := &pvpool.PoolList{Items: []pvpool.Pool{pool("a", 1), pool("broken", 1)}}
	if _, err := Convert(list, testColumns, nameAndReplicas); err == nil {
		t.Error("no error for a list with an item whose cells fail")
	}
}

func TestAge(t *testing.T) {
	tests := []struct {
		name      string
		timestamp metav1.Time
		want      string
	}{
		{"zero", metav1.Time{}, "<unknown>"},
		{"hours", metav1.NewTime(time.Now().Add(-5*time.Hour - 10*time.Minute)), "5h10m"},
		{"days", metav1.NewTime(time.Now().Add(-30 * 24 * time.Hour)), "30d"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Age(tc.timestamp); got != tc.want {
				t.Errorf("Age = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestApplyOptionsDropsHeadersOnlyWhenAsked(t *testing.T) {
	columns := []metav1.TableColumnDefinition{{Name: "Name"}}
	if got := ApplyOptions(&metav1.Table{ColumnDefinitions: columns}, &metav1.TableOptions{NoHeaders: true}); got.ColumnDefinitions != nil {
		t.Errorf("NoHeaders kept the columns: %v", got.ColumnDefinitions)
	}
	if got := ApplyOptions(&metav1.Table{ColumnDefinitions: columns}, &metav1.TableOptions{}); len(got.ColumnDefinitions) != 1 {
		t.Errorf("columns dropped without NoHeaders")
	}
	if got := ApplyOptions(&metav1.Table{ColumnDefinitions: columns}, nil); len(got.ColumnDefinitions) != 1 {
		t.Errorf("columns dropped without options")
	}
}
