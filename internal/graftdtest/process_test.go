package graftdtest_test

import (
	"os"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

func TestMain(m *testing.M) {
	graftdtest.Main()
	os.Exit(m.Run())
}

// A graftd process killed with SIGKILL, or stopped, comes back on its
// addresses with its data and root token, and its clients reconnect.
func TestProcessKilledAndStartedAgain(t *testing.T) {
	g := graftdtest.StartProcess(t)
	if g.Daemon != nil {
		t.Fatal("a graftd process has no Daemon in this process")
	}
	ctx := t.Context()
	c, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: g.Token})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	put, err := c.Put(ctx, "/dba/kill/k", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	addr, httpAddr := g.Addr, g.HTTPAddr
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := g.Kill(); err == nil {
		t.Fatal("a second Kill of a graftd that is down succeeded")
	}
	if _, err := c.Get(ctx, "/dba/kill/k"); err == nil {
		t.Fatal("graftd answered after Kill")
	}
	g.StartAgain(t)
	if g.Addr != addr || g.HTTPAddr != httpAddr {
		t.Fatalf("graftd came back on %s and %s, not %s and %s", g.Addr, g.HTTPAddr, addr, httpAddr)
	}
	var got *sdk.Entry
	testenv.WaitFor(t, 30*time.Second, func() bool { got, err = c.Get(ctx, "/dba/kill/k"); return err == nil })
	if string(got.Value) != "v1" || got.Revision != put.Revision {
		t.Fatalf("after the kill: %q at revision %d; want the value written before, at %d", got.Value, got.Revision, put.Revision)
	}
	g.Restart(t)
	testenv.WaitFor(t, 30*time.Second, func() bool { _, err = c.Put(ctx, "/dba/kill/k", []byte("v2")); return err == nil })
}
