// Package volume manages qcow2 images, the qemu-storage-daemon that serves them and the host block
// devices that expose them. It has no Kubernetes dependencies so it can be tested and reused alone.
package volume

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// CommandError carries the stderr of a failed host command, which is where qemu-img and losetup explain
// themselves.
type CommandError struct {
	Command  string
	Args     []string
	ExitCode int
	Stderr   string
	Err      error
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%s %s: %v: %s", e.Command, strings.Join(e.Args, " "), e.Err, strings.TrimSpace(e.Stderr))
}

func (e *CommandError) Unwrap() error { return e.Err }

// run executes a host command and returns its stdout.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		code := -1
		if exitErr, ok := err.(*exec.ExitError); ok {
			code = exitErr.ExitCode()
		}
		return stdout.Bytes(), &CommandError{Command: name, Args: args, ExitCode: code, Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}
