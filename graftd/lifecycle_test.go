package graftd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
)

func devTestConfig(t *testing.T) Config {
	cfg := DevConfig(t.TempDir())
	cfg.ShutdownTimeout = 2 * time.Second
	return cfg
}

// runUntilReady runs d in the background and returns Run's result channel.
func runUntilReady(t *testing.T, ctx context.Context, d *Daemon) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("Run ended before ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("not ready after 20s")
	}
	return done
}

// A part that fails stops the whole of graftd: Run returns the failure by
// name, the API stops listening, and the data directory is free again.
func TestAFailingPartStopsGraftd(t *testing.T) {
	cfg := devTestConfig(t)
	d, err := New(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := runUntilReady(t, context.Background(), d)
	addr := d.Addr()
	d.httpLn.Close() // the HTTP server's Serve now fails
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "HTTP server") {
			t.Fatalf("Run = %v, want the HTTP server's failure", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("graftd kept running after one of its parts failed")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the gRPC listener %s is still open after Run returned", addr)
	}
	d, err = New(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatalf("a second graftd on the same data: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done = runUntilReady(t, ctx, d)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after its context ended = %v, want nil", err)
	}
}

// A second graftd on a data directory in use fails at once, naming the
// process that holds it and what to do, instead of waiting for ever on
// the embedded etcd's lock.
func TestDataDirInUseFailsAtOnce(t *testing.T) {
	cfg := devTestConfig(t)
	first, err := Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Shutdown(context.Background())
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = New(ctx, cfg, testenv.Logger(t))
	if !errors.Is(err, ErrDataDirInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("second graftd on the same data = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the refusal took %s; want under a second", d)
	}
}
