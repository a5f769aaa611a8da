//go:build !linux

package dbproc

import "syscall"

// SysProcAttr runs a child as cred. Only Linux has Pdeathsig: elsewhere
// a server outlives a process killed with SIGKILL (graft-bench's servers
// are stopped on its way out otherwise).
func SysProcAttr(cred *syscall.Credential, _ syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}
