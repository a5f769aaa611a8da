package replicator_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
)

// EnsureStream creates the change stream, updates it only when its
// settings differ, and leaves one as configured alone: every relay that
// starts to lead calls it, and an update while a replicator creates its
// consumer races inside nats-server.
func TestEnsureStreamUpdatesOnlyWhatDiffers(t *testing.T) {
	n, js := testenv.StartJetStream(t)
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	updates, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.STREAM.UPDATED.GRAFT_CHANGES")
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	ensure := func(cfg replicator.StreamConfig, wantCreated bool) {
		t.Helper()
		created, err := replicator.EnsureStream(t.Context(), js, cfg)
		if err != nil || created != wantCreated {
			t.Fatalf("EnsureStream(%+v) = %v, %v; want created %v", cfg, created, err, wantCreated)
		}
	}
	updated := func() int {
		t.Helper()
		nc.Flush()
		time.Sleep(200 * time.Millisecond) // advisories are asynchronous
		n, _, _ := updates.Pending()
		return n
	}
	ensure(replicator.StreamConfig{}, true)
	ensure(replicator.StreamConfig{}, false)
	ensure(replicator.StreamConfig{}, false)
	if n := updated(); n != 0 {
		t.Fatalf("a stream as configured was updated %d times", n)
	}
	ensure(replicator.StreamConfig{MaxAge: time.Hour}, false)
	if n := updated(); n != 1 {
		t.Fatalf("a stream whose max age differs was updated %d times, want once", n)
	}
	s, err := js.Stream(t.Context(), "GRAFT_CHANGES")
	if err != nil || s.CachedInfo().Config.MaxAge != time.Hour {
		t.Fatalf("after the update: %v; want max age 1h", err)
	}
}
