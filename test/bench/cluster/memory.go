package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The processes whose memory is reported. The local cluster runs its pods on this host, so they are
// found in /proc; only those in the cluster's cgroup root count, so a pvpool-csi started by csi-sanity
// or a test on the same machine is not mistaken for the cluster's.
const (
	roleAPIServer     = "pvpool-apiserver"
	roleCSIController = "pvpool-csi controller"
	roleCSINode       = "pvpool-csi node"
)

var processRoles = []string{roleAPIServer, roleCSIController, roleCSINode}

// processRole names what a process with these arguments is, or "" when it is none of ours.
func processRole(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	switch filepath.Base(argv[0]) {
	case "pvpool-apiserver":
		return roleAPIServer
	case "pvpool-csi":
		for i, arg := range argv[1:] {
			switch {
			case arg == "--mode=controller" || arg == "-mode=controller",
				(arg == "--mode" || arg == "-mode") && i+2 < len(argv) && argv[i+2] == "controller":
				return roleCSIController
			case arg == "--mode=node" || arg == "-mode=node",
				(arg == "--mode" || arg == "-mode") && i+2 < len(argv) && argv[i+2] == "node":
				return roleCSINode
			}
		}
	}
	return ""
}

// vmRSSKiB reads VmRSS from the text of /proc/<pid>/status.
func vmRSSKiB(status []byte) (int64, error) {
	scanner := bufio.NewScanner(bytes.NewReader(status))
	for scanner.Scan() {
		line := scanner.Text()
		if !strings.HasPrefix(line, "VmRSS:") {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, "VmRSS:"))
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("unexpected VmRSS line %q", line)
		}
		return strconv.ParseInt(fields[0], 10, 64)
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// processRSS is one observation of one of our processes.
type processRSS struct {
	role string
	pid  int
	kib  int64
}

// sampleRSS reads the RSS of every process of ours under cgroupRoot.
func sampleRSS(cgroupRoot string) ([]processRSS, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var found []processRSS
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", entry.Name())
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil {
			continue // gone already
		}
		role := processRole(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"))
		if role == "" {
			continue
		}
		if cgroupRoot != "" {
			cgroup, err := os.ReadFile(filepath.Join(dir, "cgroup"))
			if err != nil || !bytes.Contains(cgroup, []byte(":"+strings.TrimSuffix(cgroupRoot, "/")+"/")) {
				continue
			}
		}
		status, err := os.ReadFile(filepath.Join(dir, "status"))
		if err != nil {
			continue
		}
		kib, err := vmRSSKiB(status)
		if err != nil {
			return nil, fmt.Errorf("pid %d: %w", pid, err)
		}
		found = append(found, processRSS{role: role, pid: pid, kib: kib})
	}
	return found, nil
}

// ProcessMemory is what the report says about one kind of process.
type ProcessMemory struct {
	Role string `json:"role"`
	// PIDs seen (more than one when the process was restarted during the run).
	PIDs []int `json:"pids"`
	// IdleKiB is VmRSS before any load; MaxLoadedKiB the largest VmRSS sampled during the throughput
	// run; Samples how many samples that maximum was taken over.
	IdleKiB      int64 `json:"idleKiB"`
	MaxLoadedKiB int64 `json:"maxLoadedKiB"`
	Samples      int   `json:"samples"`
}

// memoryMonitor keeps the idle RSS and the maximum RSS seen while sampling.
type memoryMonitor struct {
	cgroupRoot string
	mu         sync.Mutex
	byRole     map[string]*ProcessMemory
}

func newMemoryMonitor(cgroupRoot string) *memoryMonitor {
	monitor := &memoryMonitor{cgroupRoot: cgroupRoot, byRole: map[string]*ProcessMemory{}}
	for _, role := range processRoles {
		monitor.byRole[role] = &ProcessMemory{Role: role}
	}
	return monitor
}

// sampleIdle records the RSS of the processes as they are now, before any load.
func (m *memoryMonitor) sampleIdle() error {
	found, err := sampleRSS(m.cgroupRoot)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, process := range found {
		memory := m.byRole[process.role]
		memory.IdleKiB += process.kib
		memory.PIDs = appendPID(memory.PIDs, process.pid)
	}
	for _, role := range processRoles {
		if m.byRole[role].IdleKiB == 0 {
			return fmt.Errorf("no %s process found in cgroup root %s", role, m.cgroupRoot)
		}
	}
	return nil
}

// sampleLoaded records one sample under load; several processes of one role (a restart caught
// midway) add up, as they all take memory at that moment.
func (m *memoryMonitor) sampleLoaded() error {
	found, err := sampleRSS(m.cgroupRoot)
	if err != nil {
		return err
	}
	sums := map[string]int64{}
	for _, process := range found {
		sums[process.role] += process.kib
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, process := range found {
		memory := m.byRole[process.role]
		memory.PIDs = appendPID(memory.PIDs, process.pid)
	}
	for role, kib := range sums {
		memory := m.byRole[role]
		memory.Samples++
		if kib > memory.MaxLoadedKiB {
			memory.MaxLoadedKiB = kib
		}
	}
	return nil
}

// sampleWhile samples every interval until ctx ends.
func (m *memoryMonitor) sampleWhile(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		_ = m.sampleLoaded() // a process exiting between listing and reading is not an error worth stopping for
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (m *memoryMonitor) report() []ProcessMemory {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ProcessMemory
	for _, role := range processRoles {
		memory := *m.byRole[role]
		memory.PIDs = append([]int(nil), memory.PIDs...)
		sort.Ints(memory.PIDs)
		out = append(out, memory)
	}
	return out
}

func appendPID(pids []int, pid int) []int {
	for _, seen := range pids {
		if seen == pid {
			return pids
		}
	}
	return append(pids, pid)
}
