package task_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/task"
)

// untilDone runs until its context ends and says it saw that.
func untilDone(stopped chan<- string, name string) task.Task {
	return task.New(name, func(ctx context.Context) error {
		<-ctx.Done()
		stopped <- name
		return ctx.Err()
	})
}

func TestFirstFailureCancelsTheRest(t *testing.T) {
	stopped := make(chan string, 2)
	boom := errors.New("boom")
	err := task.Run(context.Background(), 0,
		untilDone(stopped, "a"),
		untilDone(stopped, "b"),
		task.New("failing", func(context.Context) error { return boom }),
	)
	if !errors.Is(err, boom) || err.Error() != "failing: boom" {
		t.Fatalf("Run = %v, want failing: boom", err)
	}
	if len(stopped) != 2 {
		t.Fatalf("%d of 2 tasks saw the cancellation", len(stopped))
	}
}

func TestEveryFailureIsReturned(t *testing.T) {
	first, second := errors.New("first"), errors.New("second")
	release := make(chan struct{})
	err := task.Run(context.Background(), 0,
		task.New("one", func(context.Context) error { defer close(release); return first }),
		// Fails on its way out, after the first failure cancelled it.
		task.New("two", func(ctx context.Context) error { <-ctx.Done(); <-release; return second }),
	)
	if !errors.Is(err, first) || !errors.Is(err, second) {
		t.Fatalf("Run = %v, want both failures", err)
	}
	for _, want := range []string{"one: first", "two: second"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %q", err, want)
		}
	}
}

func TestCancelledContextIsACleanStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan string, 2)
	done := make(chan error)
	go func() { done <- task.Run(ctx, time.Second, untilDone(stopped, "a"), untilDone(stopped, "b")) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if len(stopped) != 2 {
		t.Fatalf("%d of 2 tasks stopped", len(stopped))
	}
}

func TestFinishedTaskStopsNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan string, 1)
	done := make(chan error)
	go func() {
		done <- task.Run(ctx, 0, task.New("one-shot", func(context.Context) error { return nil }), untilDone(stopped, "server"))
	}()
	select {
	case <-stopped:
		t.Fatal("a task that finished cancelled the others")
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestDrainIsBounded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	stuck := make(chan struct{})
	defer close(stuck)
	start := time.Now()
	err := task.Run(ctx, 100*time.Millisecond,
		task.New("quick", func(ctx context.Context) error { <-ctx.Done(); return nil }),
		task.New("stuck", func(context.Context) error { <-stuck; return nil }),
	)
	if !errors.Is(err, task.ErrNotStopped) || !strings.Contains(err.Error(), "stuck") || strings.Contains(err.Error(), "quick") {
		t.Fatalf("Run = %v, want ErrNotStopped naming only the stuck task", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Run waited %s for a stuck task; the bound is 100ms", d)
	}
}

// A task that panics fails, named, with ErrPanic, and the others are
// cancelled as for any failure: the process does not die under them.
func TestPanicIsAFailure(t *testing.T) {
	stopped := make(chan string, 1)
	err := task.Run(context.Background(), time.Second,
		untilDone(stopped, "a"),
		task.New("bad", func(context.Context) error { panic("nil map") }),
	)
	if !errors.Is(err, task.ErrPanic) || !strings.HasPrefix(err.Error(), "bad: panicked: nil map") {
		t.Fatalf("Run = %v, want bad: panicked: nil map", err)
	}
	if len(stopped) != 1 {
		t.Fatal("the other task was not cancelled")
	}
}
