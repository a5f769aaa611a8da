//go:build !linux

package agent

import "syscall"

// childAttr runs the application in a process group of its own. Only
// Linux has a parent-death signal: elsewhere an application outlives an
// agent killed with SIGKILL, and the next agent starts a second copy.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
