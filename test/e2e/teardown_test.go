package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTeardown runs `hack/cluster/down.sh` and checks that nothing of the cluster is left: no process
// it recorded, no mount or loop device under its state dir, no listening port, no bridge, no state.
// It destroys the cluster, so it only runs when PVPOOL_E2E_TEARDOWN=1 (hack/e2e.sh sets it for the
// final step when it brought the cluster up itself).
func TestTeardown(t *testing.T) {
	c := requireCluster(t)
	if os.Getenv("PVPOOL_E2E_TEARDOWN") != "1" {
		t.Skip("tears the cluster down: set PVPOOL_E2E_TEARDOWN=1 to run")
	}
	pids := recordedPIDs(t, filepath.Join(c.stateDir, "pids"))
	if len(pids) == 0 {
		t.Fatalf("no PID files under %s: is the cluster up?", c.stateDir)
	}
	ports := []int{
		envPort("PVPOOL_KUBE_APISERVER_PORT", 6443), envPort("PVPOOL_ETCD_CLIENT_PORT", 12379),
		envPort("PVPOOL_ETCD_PEER_PORT", 12380), envPort("PVPOOL_CONTROLLER_MANAGER_PORT", 10257),
		envPort("PVPOOL_SCHEDULER_PORT", 10259), envPort("PVPOOL_KUBELET_PORT", 10250),
		envPort("PVPOOL_KUBELET_HEALTHZ_PORT", 10248), envPort("PVPOOL_AGGREGATED_APISERVER_PORT", 8443),
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	down := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "hack", "cluster", "down.sh"))
	out, err := down.CombinedOutput()
	t.Logf("down.sh:\n%s", out)
	if err != nil {
		t.Fatalf("down.sh: %v", err)
	}

	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("%s (pid %d) still runs", name, pid)
		}
	}
	// Anything else of the cluster (containerd shims, daemons of the CSI plugin) names the state dir.
	for _, pid := range processesNaming(t, c.stateDir) {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		t.Errorf("process %d still runs: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	for _, mp := range mountsUnder(t, c.stateDir) {
		t.Errorf("still mounted: %s", mp)
	}
	loops, err := exec.Command("losetup", "-l", "-n", "-O", "NAME,BACK-FILE").Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	for _, line := range strings.Split(string(loops), "\n") {
		if strings.Contains(line, c.stateDir) {
			t.Errorf("loop device left: %s", line)
		}
	}
	listening := listeningPorts(t)
	for _, p := range ports {
		if listening[p] {
			t.Errorf("port %d still listening", p)
		}
	}
	if _, err := os.Stat(c.stateDir); !os.IsNotExist(err) {
		t.Errorf("state dir %s still exists (err=%v)", c.stateDir, err)
	}
	bridge := envOr("PVPOOL_BRIDGE", "pvpool0")
	if _, err := os.Stat(filepath.Join("/sys/class/net", bridge)); err == nil {
		t.Errorf("bridge %s still exists", bridge)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*" + envOr("PVPOOL_CGROUP_ROOT", "/pvpool")); len(left) > 0 {
		t.Errorf("cgroups left: %v", left)
	}
}

func envPort(name string, fallback int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return fallback
}

func recordedPIDs(t *testing.T, dir string) map[string]int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		pids[strings.TrimSuffix(filepath.Base(f), ".pid")] = pid
	}
	return pids
}

func processesNaming(t *testing.T, dir string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var found []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := strings.ReplaceAll(fields[4], `\040`, " ")
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	return found
}

// listeningPorts reads the TCP sockets in LISTEN state (state 0A) from /proc/net/tcp{,6}.
func listeningPorts(t *testing.T) map[int]bool {
	t.Helper()
	ports := map[int]bool{}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 4 || fields[3] != "0A" {
				continue
			}
			local := fields[1]
			i := strings.LastIndex(local, ":")
			port, err := strconv.ParseInt(local[i+1:], 16, 32)
			if err != nil {
				t.Fatal(fmt.Errorf("parsing %s: %w", local, err))
			}
			ports[int(port)] = true
		}
	}
	return ports
}
