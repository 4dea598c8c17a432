package main

import "testing"

func TestProcessRole(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"/usr/local/bin/pvpool-apiserver", "--secure-port=8443"}, roleAPIServer},
		{[]string{"/usr/local/bin/pvpool-csi", "--mode=controller", "--v=2"}, roleCSIController},
		{[]string{"/usr/local/bin/pvpool-csi", "--endpoint=unix:///csi.sock", "--mode", "node"}, roleCSINode},
		// Without a mode the plugin serves everything; that is not the cluster's deployment.
		{[]string{"/usr/local/bin/pvpool-csi", "--endpoint=unix:///csi.sock"}, ""},
		{[]string{"/usr/bin/pvpool-csi-sanity", "--mode=node"}, ""},
		{[]string{"/bin/sh", "-c", "pvpool-apiserver"}, ""},
		{nil, ""},
	} {
		if got := processRole(tc.argv); got != tc.want {
			t.Errorf("processRole(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

func TestVmRSSKiB(t *testing.T) {
	status := "Name:\tpvpool-apiserve\nVmPeak:\t  200000 kB\nVmRSS:\t  108432 kB\nRssAnon:\t   70000 kB\n"
	got, err := vmRSSKiB([]byte(status))
	if err != nil || got != 108432 {
		t.Errorf("vmRSSKiB = %d, %v; want 108432", got, err)
	}
	if _, err := vmRSSKiB([]byte("Name:\tkthreadd\n")); err == nil {
		t.Errorf("a kernel thread's status (no VmRSS) gave no error")
	}
	if _, err := vmRSSKiB([]byte("VmRSS:\t12 MB\n")); err == nil {
		t.Errorf("an unknown unit gave no error")
	}
}
