//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fileNotices learns from inotify when each file is replaced, so that a
// delivery is timed when the agent's rename lands, not when a sweep over
// 10,000 files (seconds on two busy cores) comes by.
type fileNotices struct {
	fd    int
	files []string
	byWD  map[int32]int
}

// notifyFiles watches the directory of each file (graft-agent renames a
// new version into place).
func notifyFiles(files []string) (*fileNotices, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	n := &fileNotices{fd: fd, files: files, byWD: make(map[int32]int, len(files))}
	for i, f := range files {
		wd, err := unix.InotifyAddWatch(fd, filepath.Dir(f), unix.IN_MOVED_TO)
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("inotify watch %d of %d (see /proc/sys/fs/inotify/max_user_watches): %w", i+1, len(files), err)
		}
		n.byWD[int32(wd)] = i
	}
	return n, nil
}

func (n *fileNotices) close() { unix.Close(n.fd) }

// wait returns when each file holds want, each timed when inotify told of
// its last change; files that already hold it are timed now.
func (n *fileNotices) wait(ctx context.Context, want string, timeout time.Duration) (sweeps, error) {
	s := sweeps{at: make([]time.Time, len(n.files))}
	left := len(n.files)
	check := func(i int, at time.Time) {
		if s.at[i].IsZero() {
			if data, err := os.ReadFile(n.files[i]); err == nil && string(data) == want {
				s.at[i] = at
				left--
			}
		}
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 64<<10)
	fds := []unix.PollFd{{Fd: int32(n.fd), Events: unix.POLLIN}}
	for left > 0 {
		if err := ctx.Err(); err != nil {
			return s, err
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("%d of %d files do not hold the value after %s", left, len(n.files), timeout)
		}
		if _, err := unix.Poll(fds, 100); err != nil && !errors.Is(err, unix.EINTR) {
			return s, fmt.Errorf("inotify: %w", err)
		}
		if fds[0].Revents&unix.POLLIN == 0 {
			continue
		}
		got, err := unix.Read(n.fd, buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return s, fmt.Errorf("inotify: %w", err)
		}
		at := time.Now()
		for off := 0; off+unix.SizeofInotifyEvent <= got; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				// Events were lost: look at every file that is left.
				for i := range n.files {
					check(i, at)
				}
			} else if i, ok := n.byWD[ev.Wd]; ok {
				name := string(buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)])
				if trimNUL(name) == filepath.Base(n.files[i]) {
					check(i, at)
				}
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	return s, nil
}

func trimNUL(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return s[:i]
		}
	}
	return s
}
