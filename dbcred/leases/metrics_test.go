package leases_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/dbcred/leases"
	"github.com/graft-sh/graft/internal/testenv"
)

// The manager's metrics follow what it does: issues and revocations by
// result, the reaper's backlog of due leases, which grows while it is
// paused and drains once it resumes, and its switch.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := start(t, readOnly(), func(c *leases.Config) { c.Registerer = reg })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	gauge := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}

	first, err := r.m.Issue(ctx, appCopy, "app:orders", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Issue(ctx, appCopy, "app:orders", -time.Second); err == nil {
		t.Fatal("a negative ttl was issued")
	}
	if _, err := r.m.Revoke(ctx, first.Lease.ID); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{"ok": 1, "error": 1} {
		if got := count(t, reg, "graft_lease_issues_total", name); got != want {
			t.Errorf("graft_lease_issues_total{result=%q} = %v, want %v", name, got, want)
		}
	}
	if got := count(t, reg, "graft_lease_revocations_total", "ok"); got != 1 {
		t.Errorf("graft_lease_revocations_total{result=ok} = %v, want 1", got)
	}

	if err := r.m.SetPaused(ctx, true); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { defer close(reaped); r.m.RunReaper(ctx, "test") }()
	defer func() { cancel(); <-reaped }()
	for range 3 {
		if _, err := r.m.Issue(ctx, appCopy, "app:orders", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(1100 * time.Millisecond)
	if got := gauge("graft_lease_reaper_paused"); got != 1 {
		t.Errorf("graft_lease_reaper_paused = %v while paused, want 1", got)
	}
	if got := gauge("graft_lease_reaper_backlog"); got != 3 {
		t.Errorf("graft_lease_reaper_backlog = %v with 3 leases expired under a paused reaper, want 3", got)
	}
	if err := r.m.SetPaused(ctx, false); err != nil {
		t.Fatal(err)
	}
	// A claimed lease leaves the backlog (it is due again only should
	// its revocation be cut short); the revocations count when done.
	testenv.WaitFor(t, 10*time.Second, func() bool { return count(t, reg, "graft_lease_revocations_total", "ok") == 4 })
	if got := gauge("graft_lease_reaper_backlog"); got != 0 {
		t.Errorf("graft_lease_reaper_backlog = %v once the reaper revoked them, want 0", got)
	}
	if got := gauge("graft_lease_reaper_paused"); got != 0 {
		t.Errorf("graft_lease_reaper_paused = %v after resume, want 0", got)
	}
}

// count is the value of counter name's series with label result.
func count(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
