package graftd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFileName is the file in the data directory that one graftd at a
// time holds locked, with its pid in it.
const lockFileName = "graftd.lock"

// ErrDataDirInUse marks a data directory another graftd holds.
var ErrDataDirInUse = errors.New("data directory in use")

// lockDataDir takes the data directory for this process, or fails at once
// when another process holds it. Without it a second graftd --dev waits
// for ever on the embedded etcd's database lock, printing nothing. The
// lock is an flock, so it goes with the process however it ends.
func lockDataDir(dir string) (release func(), err error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "another process"
		if data, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(data))); perr == nil && pid > 0 {
				holder = fmt.Sprintf("another graftd (pid %d)", pid)
			}
		}
		f.Close()
		abs, _ := filepath.Abs(dir)
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is used by %s; stop that one, or give this one another --data-dir", ErrDataDirInUse, abs, holder)
		}
		return nil, fmt.Errorf("lock data dir %s: %w", abs, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
