//go:build !linux

package main

import (
	"context"
	"errors"
	"time"
)

// fileNotices needs inotify; elsewhere deliveries are timed by sweeps.
type fileNotices struct{}

func notifyFiles([]string) (*fileNotices, error) {
	return nil, errors.New("file notices need Linux's inotify")
}

func (n *fileNotices) close() {}

func (n *fileNotices) wait(context.Context, string, time.Duration) (sweeps, error) {
	return sweeps{}, errors.New("file notices need Linux's inotify")
}
