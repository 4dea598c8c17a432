package main

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// The holder test runs this binary's main as `pvpool-csi hold`.
	if os.Getenv("PVPOOL_CSI_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A holder pod's process is PID 1 of its container, where SIGTERM without a handler is ignored: `hold`
// must handle it and exit 0, or every holder deletion waits out the grace period and ends in SIGKILL.
func TestHoldEndsOnSIGTERMAsPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a PID namespace")
	}
	cmd := exec.Command(os.Args[0], "hold")
	cmd.Env = append(os.Environ(), "PVPOOL_CSI_RUN_MAIN=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Until the handler is installed the signal is ignored (PID 1), so it is repeated.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for attempts := 0; ; attempts++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("hold ended with %v, want exit status 0", err)
			}
			return
		case <-tick.C:
			if attempts == 600 {
				_ = cmd.Process.Kill()
				t.Fatal("hold did not end on SIGTERM")
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
		}
	}
}
