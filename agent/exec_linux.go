package agent

import "syscall"

// childAttr runs the application in a process group of its own, with
// SIGKILL as its parent-death signal (see supervisor.start).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
