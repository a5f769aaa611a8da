package retry_test

import (
	"context"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/retry"
)

func TestBackoffDoublesToItsCeilingWithJitter(t *testing.T) {
	first, most := 10*time.Millisecond, 100*time.Millisecond
	for _, tc := range []struct {
		n    int
		base time.Duration
	}{{0, 10 * time.Millisecond}, {1, 20 * time.Millisecond}, {3, 80 * time.Millisecond}, {4, 100 * time.Millisecond}, {1000, 100 * time.Millisecond}} {
		for range 100 {
			if got := retry.Backoff(first, most, tc.n); got < tc.base/2 || got >= tc.base*3/2 {
				t.Fatalf("Backoff(%s, %s, %d) = %s, want in [%s, %s)", first, most, tc.n, got, tc.base/2, tc.base*3/2)
			}
		}
	}
	if got := retry.Backoff(0, time.Second, 3); got != 0 {
		t.Errorf("Backoff from 0 = %s, want 0", got)
	}
}

func TestSleepEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := retry.Sleep(ctx, time.Hour); err != context.Canceled {
		t.Errorf("Sleep after cancel = %v, want context.Canceled", err)
	}
	if err := retry.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("Sleep = %v, want nil", err)
	}
}
