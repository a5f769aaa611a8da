package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// BenchmarkHundredAgents measures, at 100 writes/s spread over 100 agents
// on one graftd, a DBA's write in /dba → replicated into the app's tree →
// file rendered by that app's agent (no debounce), with p50 and p99; and
// graftd's replication lag (source commit → destination commit) over the
// same run, from its histogram. Run with -benchtime 500x (5 s). The
// files go where GRAFT_BENCH_FILES says (default: the test's temporary
// directory, on disk; /dev/shm puts them on tmpfs, as /run/secrets is);
// graftd's data stays on disk either way.
func BenchmarkHundredAgents(b *testing.B) {
	const agents = 100
	g := graftdtest.Start(b)
	ctx := context.Background()
	root, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: g.Token})
	if err != nil {
		b.Fatal(err)
	}
	defer root.Close()
	dir := b.TempDir()
	if base := os.Getenv("GRAFT_BENCH_FILES"); base != "" {
		if dir, err = os.MkdirTemp(base, "graft-bench-"); err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
	files := make([]string, agents)
	for i := range agents {
		app := fmt.Sprintf("a%03d", i)
		if _, err := root.Put(ctx, "/dba/svc/"+app+"/password", []byte("v0")); err != nil {
			b.Fatal(err)
		}
		if _, _, err := root.Share(ctx, "/dba/svc/"+app, []string{"/app/" + app + "/replicated/db"}, sdk.ShareOptions{}); err != nil {
			b.Fatal(err)
		}
		token, _, err := root.CreateToken(ctx, "app:"+app, []string{"app"}, 0)
		if err != nil {
			b.Fatal(err)
		}
		tokenFile := filepath.Join(dir, app+".token")
		os.WriteFile(tokenFile, []byte(token), 0o600)
		files[i] = filepath.Join(dir, app, "pw")
		cfg := agent.DefaultConfig()
		cfg.Server, cfg.TokenFile, cfg.App, cfg.Listen, cfg.LogLevel = g.Addr, tokenFile, app, "off", "error"
		cfg.Templates = []agent.Template{{Destination: files[i], Contents: `{{ secret "replicated/db/password" }}`}}
		cfg.Wait = agent.Wait{}
		actx, cancel := context.WithCancel(ctx)
		a, err := agent.New(actx, cfg, testenv.Logger(b), nil)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); a.Run(actx) }()
		defer func() { cancel(); <-done }()
	}
	for _, f := range files {
		testenv.WaitFor(b, 10*time.Second, func() bool { data, _ := os.ReadFile(f); return string(data) == "v0" })
	}
	lats := make(chan time.Duration, b.N+1)
	tick := time.NewTicker(10 * time.Millisecond) // 100 writes/s
	defer tick.Stop()
	n := 0
	for b.Loop() {
		<-tick.C
		n++
		i := n % agents
		want := "v" + strconv.Itoa(n)
		start := time.Now()
		if _, err := root.Put(ctx, fmt.Sprintf("/dba/svc/a%03d/password", i), []byte(want)); err != nil {
			b.Fatal(err)
		}
		go func(f string) {
			for {
				if data, _ := os.ReadFile(f); string(data) == want {
					lats <- time.Since(start)
					return
				}
				time.Sleep(200 * time.Microsecond)
			}
		}(files[i])
	}
	var all []time.Duration
	for range n {
		select {
		case l := <-lats:
			all = append(all, l)
		case <-time.After(10 * time.Second):
			b.Fatalf("only %d of %d writes reached their file", len(all), n)
		}
	}
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "file-p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "file-p99-ms")
	p50, p99 := lagQuantiles(b, "http://"+g.HTTPAddr+"/metrics")
	b.ReportMetric(p50*1000, "repl-p50-le-ms")
	b.ReportMetric(p99*1000, "repl-p99-le-ms")
}

// lagQuantiles reads graft_replication_lag_seconds and returns the upper
// bounds of the buckets holding its 50th and 99th percentiles.
func lagQuantiles(b *testing.B, url string) (p50, p99 float64) {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	type bucket struct{ le, count float64 }
	var buckets []bucket
	for line := range strings.Lines(string(body)) {
		if !strings.HasPrefix(line, "graft_replication_lag_seconds_bucket{") {
			continue
		}
		le := line[strings.Index(line, `le="`)+4:]
		le = le[:strings.IndexByte(le, '"')]
		if le == "+Inf" {
			continue
		}
		f, _ := strconv.ParseFloat(le, 64)
		c, _ := strconv.ParseFloat(strings.TrimSpace(line[strings.LastIndexByte(line, ' '):]), 64)
		buckets = append(buckets, bucket{f, c})
	}
	if len(buckets) == 0 {
		b.Fatal("no graft_replication_lag_seconds in graftd's metrics")
	}
	total := buckets[len(buckets)-1].count
	for _, bk := range buckets {
		if p50 == 0 && bk.count >= total/2 {
			p50 = bk.le
		}
		if p99 == 0 && bk.count >= total*0.99 {
			p99 = bk.le
		}
	}
	return p50, p99
}
