// Package task runs a program's long-running parts together, in the spirit
// of SPIRE's util.RunTasks: each part is a function that runs until its
// context ends. The first part to fail cancels the others; Run waits for
// all of them, within a bound, and returns every failure. graftd and
// graft-agent are each a list of tasks.
package task

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
)

// Task is one long-running part. Run returns nil when its context ends
// (or when its work is done) and an error when it fails.
type Task struct {
	Name string
	Run  func(ctx context.Context) error
}

// New returns a task.
func New(name string, run func(ctx context.Context) error) Task {
	return Task{Name: name, Run: run}
}

var (
	// ErrNotStopped marks tasks that were still running when the drain
	// bound passed.
	ErrNotStopped = errors.New("did not stop in time")
	// ErrPanic marks a task that panicked: Run recovers the panic into a
	// failure of that task, so that the others are cancelled and stop
	// cleanly instead of the process dying under them.
	ErrPanic = errors.New("panicked")
)

// Run runs every task concurrently until ctx ends or one of them fails,
// then cancels the rest and waits for them. A failure is an error a task
// returns other than its context's own error after cancellation; every
// failure is returned, joined and named by its task, so none is dropped.
// A task returning nil before then has finished and stops nothing. A task
// that panics fails with an ErrPanic error holding the panic's value and
// stack.
//
// With drain > 0, tasks have that long to return once cancellation begins;
// those still running are named in an ErrNotStopped error and left
// behind. Run returns nil when ctx ended and nothing failed.
func Run(ctx context.Context, drain time.Duration, tasks ...Task) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		mu       sync.Mutex
		failures []error
		running  = make(map[string]int, len(tasks))
		done     = make(chan struct{}, len(tasks))
	)
	for _, t := range tasks {
		running[t.Name]++
	}
	for _, t := range tasks {
		go func() {
			err := runRecovered(runCtx, t)
			mu.Lock()
			if err != nil && !(runCtx.Err() != nil && isContextErr(err)) {
				failures = append(failures, fmt.Errorf("%s: %w", t.Name, err))
				cancel()
			}
			if running[t.Name]--; running[t.Name] == 0 {
				delete(running, t.Name)
			}
			mu.Unlock()
			done <- struct{}{}
		}()
	}

	left := len(tasks)
	for left > 0 {
		select {
		case <-done:
			left--
			continue
		case <-runCtx.Done():
		}
		break
	}
	// Cancellation has begun (or everything finished): wait for the rest.
	var timeout <-chan time.Time
	if drain > 0 {
		t := time.NewTimer(drain)
		defer t.Stop()
		timeout = t.C
	}
	for left > 0 {
		select {
		case <-done:
			left--
		case <-timeout:
			mu.Lock()
			names := make([]string, 0, len(running))
			for n := range running {
				names = append(names, n)
			}
			slices.Sort(names)
			failures = append(failures, fmt.Errorf("%s: %w (%s after cancellation)", strings.Join(names, ", "), ErrNotStopped, drain))
			err := errors.Join(failures...)
			mu.Unlock()
			return err
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return errors.Join(failures...)
}

// runRecovered runs t, turning a panic into an ErrPanic error.
func runRecovered(ctx context.Context, t Task) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v\n%s", ErrPanic, p, debug.Stack())
		}
	}()
	return t.Run(ctx)
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
