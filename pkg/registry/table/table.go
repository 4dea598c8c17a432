// Package table turns stored objects into the metav1.Table that kubectl get prints.
package table

import (
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
)

// CellsFunc returns the cells of one object's row, one per column.
type CellsFunc func(obj runtime.Object) ([]interface{}, error)

// Convert builds a table of object, a single object or a list, with cells from cells.
func Convert(object runtime.Object, columns []metav1.TableColumnDefinition, cells CellsFunc) (*metav1.Table, error) {
	table := &metav1.Table{ColumnDefinitions: columns}
	addRow := func(obj runtime.Object) error {
		row, err := cells(obj)
		if err != nil {
			return err
		}
		table.Rows = append(table.Rows, metav1.TableRow{Cells: row, Object: runtime.RawExtension{Object: obj}})
		return nil
	}
	if meta.IsListType(object) {
		if err := meta.EachListItem(object, addRow); err != nil {
			return nil, err
		}
		if list, err := meta.ListAccessor(object); err == nil {
			table.ResourceVersion = list.GetResourceVersion()
			table.Continue = list.GetContinue()
			table.RemainingItemCount = list.GetRemainingItemCount()
		}
		return table, nil
	}
	if err := addRow(object); err != nil {
		return nil, err
	}
	if accessor, err := meta.Accessor(object); err == nil {
		table.ResourceVersion = accessor.GetResourceVersion()
	}
	return table, nil
}

// Age prints the time since timestamp the way kubectl does.
func Age(timestamp metav1.Time) string {
	if timestamp.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(time.Since(timestamp.Time))
}

// ApplyOptions honours the request's TableOptions: watches ask for the column definitions once, with
// the first event, and NoHeaders on every later one.
func ApplyOptions(table *metav1.Table, tableOptions runtime.Object) *metav1.Table {
	if options, ok := tableOptions.(*metav1.TableOptions); ok && options.NoHeaders && table != nil {
		table.ColumnDefinitions = nil
	}
	return table
}
