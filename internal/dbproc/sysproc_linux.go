package dbproc

import "syscall"

// SysProcAttr runs a child as cred, sent deathSig when this process dies.
func SysProcAttr(cred *syscall.Credential, deathSig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: deathSig}
}
