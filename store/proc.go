package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
)

// A candidacy in an election carries the identity of the process that
// made it, so that a graftd started again after a crash (kill -9, the
// OOM killer) can tell its dead predecessor's candidacy from a
// live replica's and end it, instead of waiting for its lease to run out
// while nobody leads. The identity is the machine's boot, the pid
// namespace, the pid and the process's start time: a pid reused by
// another process, a process of another container with its own pid
// namespace, or one of another machine is never taken for dead.

// identitySep separates a candidacy's holder from its process identity.
const identitySep = "#"

// selfIdentity is this process's identity, "" where /proc cannot say.
var selfIdentity = sync.OnceValue(func() string {
	id, err := processIdentity(os.Getpid())
	if err != nil {
		return ""
	}
	return id
})

// processIdentity is pid's identity: boot/pidns/pid/start.
func processIdentity(pid int) (string, error) {
	boot, ns, err := machine()
	if err != nil {
		return "", err
	}
	start, err := startTime(pid)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s/%s/%d/%d", boot, ns, pid, start), nil
}

// machine is this boot's id and this process's pid namespace, read once:
// they do not change while the process runs.
func machine() (boot, ns string, err error) {
	m, err := readMachine()
	return m.boot, m.ns, err
}

var readMachine = sync.OnceValues(func() (struct{ boot, ns string }, error) {
	var m struct{ boot, ns string }
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return m, err
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return m, err
	}
	m.boot, m.ns = strings.TrimSpace(string(b)), strings.ReplaceAll(ns, "/", "_")
	return m, nil
})

// startTime is when pid started, in clock ticks since boot (field 22 of
// /proc/<pid>/stat, counted after the command name, which may hold spaces
// and parentheses).
func startTime(pid int) (uint64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	fields := strings.Fields(string(stat[i+1:]))
	// fields[0] is field 3 (state); the start time is field 22.
	if len(fields) < 20 {
		return 0, errors.New("short /proc stat")
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// candidacy is the value a candidate campaigns with.
func candidacy(holder string) string {
	if id := selfIdentity(); id != "" {
		return holder + identitySep + id
	}
	return holder
}

// deadHere reports whether the candidacy value was made by a process of
// this boot and pid namespace that no longer runs. Anything it cannot be
// sure of is alive.
func deadHere(value string) bool {
	i := strings.LastIndex(value, identitySep)
	if i < 0 {
		return false
	}
	parts := strings.Split(value[i+len(identitySep):], "/")
	if len(parts) != 4 {
		return false
	}
	boot, ns, err := machine()
	if err != nil || parts[0] != boot || parts[1] != ns {
		return false
	}
	pid, err1 := strconv.Atoi(parts[2])
	start, err2 := strconv.ParseUint(parts[3], 10, 64)
	if err1 != nil || err2 != nil || pid <= 0 {
		return false
	}
	now, err := startTime(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return true
	}
	return err == nil && now != start
}

// holderOf is the holder part of a candidacy value, for logs.
func holderOf(value string) string {
	if i := strings.LastIndex(value, identitySep); i >= 0 {
		return value[:i]
	}
	return value
}
