package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"
)

// profileCPU starts CPU profiles of graftd (through its /debug/pprof,
// beside metricsURL) and of this process, both for d, into dir, with
// graftd's allocations before and after. The returned function waits
// until all are written; who (the subcommand) starts its errors.
func profileCPU(ctx context.Context, who, dir, metricsURL, token string, d time.Duration) (func() error, error) {
	if metricsURL == "" {
		return nil, fmt.Errorf("%s: --profile needs graftd's address: with --addr, give --metrics-url too", who)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: --profile: %w", who, err)
	}
	base := strings.TrimSuffix(metricsURL, "/metrics") + "/debug/pprof/"
	// What graftd allocated over the window: the difference of these two
	// (go tool pprof -base graftd-allocs-before.pprof graftd-allocs-after.pprof).
	if err := fetch(ctx, who, base+"allocs", token, filepath.Join(dir, "graftd-allocs-before.pprof")); err != nil {
		return nil, err
	}
	own, err := os.Create(filepath.Join(dir, "bench.pprof"))
	if err != nil {
		return nil, fmt.Errorf("%s: --profile: %w", who, err)
	}
	remote := make(chan error, 1)
	go func() {
		err := fetch(ctx, who, base+fmt.Sprintf("profile?seconds=%d", int(d.Round(time.Second)/time.Second)), token, filepath.Join(dir, "graftd.pprof"))
		if err == nil {
			err = fetch(ctx, who, base+"allocs", token, filepath.Join(dir, "graftd-allocs-after.pprof"))
		}
		remote <- err
	}()
	if err := pprof.StartCPUProfile(own); err != nil {
		own.Close()
		return nil, fmt.Errorf("%s: --profile: %w", who, err)
	}
	stop := time.After(d)
	return func() error {
		select {
		case <-stop:
		case <-ctx.Done():
		}
		pprof.StopCPUProfile()
		if err := own.Close(); err != nil {
			return err
		}
		return <-remote
	}, nil
}

// fetch writes what url answers to path.
func fetch(ctx context.Context, who, url, token, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s: graftd's profile: %w", who, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: graftd's profile: %s: %s (graftd serves it with --enable-pprof)", who, resp.Status, strings.TrimSpace(string(body)))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
