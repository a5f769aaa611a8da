package replicator_test

import (
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/graft-sh/graft/replicator"
)

var unshareDests = flag.Int("unshare-dests", 1000, "destinations of the rule BenchmarkUnshareWide unshares")

// BenchmarkUnshareWide measures how long unsharing a rule takes to prune
// its copies, one value in each of -unshare-dests destinations. The
// share that fills them is not timed. The 100,000 figure of
// docs/PERFORMANCE.md:
//
//	go test ./replicator/ -run '^$' -bench UnshareWide -benchtime 1x -timeout 30m -args -unshare-dests=100000
func BenchmarkUnshareWide(b *testing.B) {
	e := newReplEnv(b, replicator.Config{})
	e.put(b, "/shared/dd/key", "v1")
	n := *unshareDests
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dests := make([]string, n)
		for k := range dests {
			dests[k] = fmt.Sprintf("/app/b%d-%06d/replicated/dd", i, k)
		}
		start := time.Now()
		rule, filled, err := e.repl.Share(e.ctx, "user:dba", "/shared/dd", dests, "")
		if err != nil || filled != n {
			b.Fatalf("share: filled %d of %d: %v", filled, n, err)
		}
		b.Logf("share of %d destinations: %s", n, time.Since(start).Round(time.Millisecond))
		b.StartTimer()
		start = time.Now()
		_, pruned, err := e.repl.Unshare(e.ctx, "user:dba", rule.ID, false)
		if err != nil || pruned != n {
			b.Fatalf("unshare: pruned %d of %d: %v", pruned, n, err)
		}
		b.Logf("unshare of %d destinations: %s", n, time.Since(start).Round(time.Millisecond))
	}
	b.ReportMetric(float64(n), "destinations")
}
