package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/cmdline"
	"github.com/graft-sh/graft/sdk"
	"github.com/graft-sh/graft/store"
)

// benchConfig is what graft-bench replicate is asked to do.
type benchConfig struct {
	duration      time.Duration
	rate          int
	fanout        int
	valueBytes    int
	etcdEndpoints []string
}

// benchResult is what it reports; -o json prints it as is.
type benchResult struct {
	Mode string `json:"mode"`
	// Graftd is the address of the graftd measured, and GraftdFrom why
	// that one: "own" (started for this run), "--addr" or "GRAFT_ADDR"
	// (exported, as the README has a shell do, it wins over starting one).
	Graftd                  string  `json:"graftd"`
	GraftdFrom              string  `json:"graftd_from"`
	Rate                    int     `json:"rate"`
	DurationS               float64 `json:"duration_s"`
	Fanout                  int     `json:"fanout"`
	Writes                  int     `json:"writes"`
	DestinationWrites       int     `json:"destination_writes"`
	DestinationWritesPerSec float64 `json:"destination_writes_per_sec"`
	// P50MS… are source commit → last destination commit, from graftd's
	// own commit timestamps of the two versions.
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
	// Seen* are what a client sees: from sending the source put until a
	// watch has delivered every destination's copy.
	SeenP50MS float64 `json:"seen_p50_ms"`
	SeenP99MS float64 `json:"seen_p99_ms"`
	SeenMaxMS float64 `json:"seen_max_ms"`
	// Floor* are the same path by hand on etcd (put, put, watch event);
	// Ratio* = Seen* / Floor*, both measured from sending the first put
	// to the watch delivery.
	// FloorVia says how the floor reached etcd: "in process", through the
	// etcd client of the graftd started for the run (as that graftd
	// reaches its embedded etcd), or "endpoints" (--etcd-endpoints, over
	// the network as a remote graftd reaches its etcd).
	FloorVia   string  `json:"floor_via,omitempty"`
	FloorP50MS float64 `json:"floor_p50_ms,omitempty"`
	FloorP99MS float64 `json:"floor_p99_ms,omitempty"`
	RatioP50   float64 `json:"ratio_p50,omitempty"`
	RatioP99   float64 `json:"ratio_p99,omitempty"`
	Superseded int     `json:"superseded"`
	Missing    int     `json:"missing"`
	// ShareMS is how long creating the rule took: validating it, claiming
	// its destinations and storing it.
	ShareMS float64  `json:"share_ms"`
	Notes   []string `json:"notes,omitempty"`
}

func (a *app) replicateCmd() *cobra.Command {
	var bc benchConfig
	cmd := &cobra.Command{
		Use:   "replicate",
		Short: "Measure source commit to destination commit through replication",
		Long: `Write to a shared source at a fixed rate and measure, for each write, the time
from sending it until every destination holds it (seen through a watch). In
the same run it measures the floor: the same path done by hand on etcd (two
sequential puts and one watch delivery), so the overhead shows as a ratio.
The floor reaches etcd as the graftd measured does: through its own graftd's
in-process etcd client in dev mode, over --etcd-endpoints for a remote one.

Without --addr or GRAFT_ADDR it starts its own graftd in dev mode in a
temporary directory. With either (an exported GRAFT_ADDR counts: run
GRAFT_ADDR= graft-bench ... for a graftd of its own) it measures that graftd,
says so in its output (graftd, graftd_from in JSON), and needs the share
action on /bench; the floor then needs --etcd-endpoints. Either way it first
replicates one value end to end and waits for it, so the figures describe a
running pipeline, not its start.`,
		Example: `  graft-bench replicate --duration 5s --rate 500 -o json
  graft-bench replicate --duration 5s --rate 500 --fanout 10
  graft-bench replicate --duration 3s --rate 2 --fanout 1000`,
		Args: cmdline.Args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case bc.duration <= 0:
				return fmt.Errorf("replicate: --duration %s: want a positive duration such as 5s", bc.duration)
			case bc.rate <= 0 || bc.rate > 100000:
				return fmt.Errorf("replicate: --rate %d: want 1 to 100000 writes per second", bc.rate)
			case bc.fanout < 1 || bc.fanout > 100000:
				return fmt.Errorf("replicate: --fanout %d: want 1 to 100000 destinations", bc.fanout)
			case bc.valueBytes < 16 || bc.valueBytes > 64<<10:
				return fmt.Errorf("replicate: --value-bytes %d: want 16 to 65536", bc.valueBytes)
			}
			remote := cmd.Flags().Changed("addr") || a.Getenv("GRAFT_ADDR") != ""
			res, err := a.benchReplicate(cmd, bc, remote)
			if err != nil {
				return err
			}
			if err := a.Emit(res, func(w io.Writer) error { return writeBench(w, res) }); err != nil {
				return err
			}
			if res.Missing > 0 {
				return fmt.Errorf("replicate: %d write(s) were not reflected at every destination within %s of the last write", res.Missing, settleTime(bc))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&bc.duration, "duration", 5*time.Second, "how long to write")
	f.IntVar(&bc.rate, "rate", 500, "source writes per second")
	f.IntVar(&bc.fanout, "fanout", 1, "destinations per source")
	f.IntVar(&bc.valueBytes, "value-bytes", 64, "size of each value")
	f.StringSliceVar(&bc.etcdEndpoints, "etcd-endpoints", nil, "etcd endpoints for the floor measurement against a remote graftd")
	return cmd
}

func (a *app) benchReplicate(cmd *cobra.Command, bc benchConfig, remote bool) (benchResult, error) {
	ctx := cmd.Context()
	res := benchResult{Mode: "dev", Rate: bc.rate, DurationS: bc.duration.Seconds(), Fanout: bc.fanout}
	var (
		c   *sdk.Client
		err error
		// dev is the store of the graftd started for this run: the floor
		// uses its etcd client, in process, as that graftd does.
		dev *store.Store
	)
	if remote {
		res.Mode, res.Graftd, res.GraftdFrom = "remote", a.Addr, "GRAFT_ADDR"
		if cmd.Flags().Changed("addr") {
			res.GraftdFrom = "--addr"
		}
		if c, err = a.Client(ctx, cmd); err != nil {
			return res, err
		}
	} else {
		d, cleanup, err := startBenchGraftd(ctx)
		if err != nil {
			return res, err
		}
		defer cleanup()
		dev = d.Store()
		res.Graftd, res.GraftdFrom = d.Addr(), "own"
		if c, err = sdk.New(ctx, sdk.Config{Addr: d.Addr(), Token: d.RootToken()}); err != nil {
			return res, err
		}
	}
	defer c.Close()

	run := fmt.Sprintf("run-%d", time.Now().UnixNano())
	source := "/bench/" + run
	dests := make([]string, bc.fanout)
	for i := range dests {
		dests[i] = fmt.Sprintf("/app/bench-%d/replicated/%s", i, run)
	}
	shareStart := time.Now()
	rule, _, err := c.Share(ctx, source, dests, sdk.ShareOptions{})
	if err != nil {
		return res, fmt.Errorf("replicate: share %s: %w", source, err)
	}
	res.ShareMS = math.Round(float64(time.Since(shareStart))/float64(time.Microsecond)) / 1000
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		c.Unshare(cctx, rule.ID, false)
		c.Delete(cctx, source+"/warmup")
		for k := range min(benchKeys, res.Writes) {
			c.Delete(cctx, fmt.Sprintf("%s/k%d", source, k))
		}
	}()

	m, err := measureReplication(ctx, c, bc, source, run)
	if err != nil {
		return res, err
	}
	lat := m.lat
	res.P50MS, res.P99MS, res.MaxMS = quantileMS(m.commit, 0.5), quantileMS(m.commit, 0.99), quantileMS(m.commit, 1)
	res.Writes, res.Superseded, res.Missing = m.writes, m.superseded, m.missing
	res.DestinationWrites = m.destWrites
	if m.elapsed > 0 {
		res.DestinationWritesPerSec = math.Round(float64(m.destWrites) / m.elapsed.Seconds())
	}
	res.SeenP50MS, res.SeenP99MS, res.SeenMaxMS = quantileMS(lat, 0.5), quantileMS(lat, 0.99), quantileMS(lat, 1)
	if m.superseded > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%d write(s) were overtaken by a newer value of the same key before they were copied (replication copies a source's current value); their latency is the newer value's", m.superseded))
	}

	scratch, samples := "/graft-bench-floor/"+run, min(len(lat), 2000)
	var floor []time.Duration
	switch {
	case dev != nil:
		res.FloorVia = "in process"
		floor, err = dev.Floor(ctx, scratch, samples)
	case len(bc.etcdEndpoints) > 0:
		res.FloorVia = "endpoints"
		floor, err = store.Floor(ctx, store.EtcdConfig{Endpoints: bc.etcdEndpoints}, scratch, samples)
	default:
		res.Notes = append(res.Notes, "no floor: give --etcd-endpoints to measure raw etcd against a remote graftd")
		return res, nil
	}
	if err != nil {
		res.Notes = append(res.Notes, "no floor: "+err.Error())
		return res, nil
	}
	res.FloorP50MS, res.FloorP99MS = quantileMS(floor, 0.5), quantileMS(floor, 0.99)
	if res.FloorP50MS > 0 {
		res.RatioP50 = math.Round(res.SeenP50MS/res.FloorP50MS*100) / 100
	}
	if res.FloorP99MS > 0 {
		res.RatioP99 = math.Round(res.SeenP99MS/res.FloorP99MS*100) / 100
	}
	return res, nil
}

// startBenchGraftd runs a dev-mode graftd in a temporary directory.
func startBenchGraftd(ctx context.Context) (*graftd.Daemon, func(), error) {
	dir, err := os.MkdirTemp("", "graft-bench-")
	if err != nil {
		return nil, nil, err
	}
	cfg := graftd.DevConfig(dir)
	cfg.MaxValueBytes = 64 << 10
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := graftd.Start(ctx, cfg, log)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("replicate: start a dev graftd: %w", err)
	}
	return d, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d.Shutdown(sctx)
		cancel()
		os.RemoveAll(dir)
	}, nil
}

// benchKeys is how many source keys a run cycles through: at 500 writes/s
// each key changes every 200 ms.
const benchKeys = 100

// replication is what measureReplication observed.
type replication struct {
	lat, commit []time.Duration
	writes      int
	superseded  int // copied only as a newer value of the same key
	missing     int // not reflected at every destination within 10 s
	destWrites  int // destination versions seen
	elapsed     time.Duration
}

// measureReplication writes at the configured rate and returns, for each
// write, the time from sending it until every destination holds it or a
// newer value of the same key. The replicator copies a source's current
// value, so a write overtaken by the next one before it was copied is never
// seen itself; its latency is that of the first later write that reached
// every destination, and it is counted as superseded.
func measureReplication(ctx context.Context, c *sdk.Client, bc benchConfig, source, run string) (replication, error) {
	// Values carry their sequence number, so the watch reads values.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	events := c.Watch(wctx, "/app", 0)

	var (
		mu       sync.Mutex
		sent     = map[int]time.Time{}
		srcAt    = map[int]time.Time{} // the source version's commit time
		destAt   = map[int]time.Time{} // the last destination version's
		arrived  = map[int]int{}
		doneAt   = map[int]time.Time{} // when the last destination was seen
		lastSeen time.Time
		dests    int
		warm     = make(chan struct{})
		warmed   = 0
	)
	marker := "/replicated/" + run + "/"
	go func() {
		for resp := range events {
			now := time.Now()
			for _, e := range resp.Events {
				if e.Type != sdk.EventPut || !strings.Contains(e.Entry.Path, marker) {
					continue
				}
				v := string(e.Entry.Value)
				if strings.HasPrefix(v, "warmup|") {
					if warmed++; warmed == bc.fanout {
						close(warm)
					}
					continue
				}
				seq, err := strconv.Atoi(v[:strings.IndexByte(v, '|')])
				if err != nil {
					continue
				}
				mu.Lock()
				dests++
				lastSeen = now
				if e.Entry.Time.After(destAt[seq]) {
					destAt[seq] = e.Entry.Time
				}
				if arrived[seq]++; arrived[seq] == bc.fanout {
					doneAt[seq] = now
				}
				mu.Unlock()
			}
		}
	}()

	pad := strings.Repeat("x", bc.valueBytes)
	// Replicate one value end to end before the clock starts, so that the
	// figures describe a running pipeline rather than its start.
	if _, err := c.Put(ctx, source+"/warmup", []byte("warmup|"+pad)); err != nil {
		return replication{}, fmt.Errorf("replicate: write: %w", err)
	}
	select {
	case <-warm:
	case <-time.After(30 * time.Second):
		return replication{}, fmt.Errorf("replicate: a first value (%s/warmup) did not reach its %d destination(s) within 30s; `graft status` on a destination shows why", source, bc.fanout)
	case <-ctx.Done():
		return replication{}, ctx.Err()
	}

	interval := time.Second / time.Duration(bc.rate)
	n := int(bc.duration / interval)
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var werr error
	var errOnce sync.Once
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		val := []byte((strconv.Itoa(i) + "|" + pad)[:bc.valueBytes])
		path := fmt.Sprintf("%s/k%d", source, i%benchKeys)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			mu.Lock()
			sent[i] = time.Now()
			mu.Unlock()
			e, err := c.Put(ctx, path, val)
			if err != nil {
				errOnce.Do(func() { werr = err })
				return
			}
			mu.Lock()
			srcAt[i] = e.Time
			mu.Unlock()
		}()
	}
	wg.Wait()
	if werr != nil {
		return replication{}, fmt.Errorf("replicate: write: %w", werr)
	}
	// Wait until the last write of every key has reached every destination:
	// then every earlier write is reflected too.
	deadline := time.Now().Add(settleTime(bc))
	for {
		mu.Lock()
		all := true
		for k := max(0, n-benchKeys); k < n; k++ {
			if _, ok := doneAt[k]; !ok {
				all = false
				break
			}
		}
		mu.Unlock()
		if all || time.Now().After(deadline) {
			break
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return replication{}, ctx.Err()
		}
	}
	mu.Lock()
	defer mu.Unlock()
	r := replication{writes: n, destWrites: dests, elapsed: lastSeen.Sub(start)}
	// Walk each key's writes from the newest: a write is reflected when it,
	// or the first later write of its key that arrived everywhere, did.
	for k := range min(benchKeys, n) {
		var reflectAt, reflectCommit time.Time
		for i := n - 1 - (n-1-k)%benchKeys; i >= 0; i -= benchKeys {
			if t, ok := doneAt[i]; ok {
				reflectAt, reflectCommit = t, destAt[i]
			} else if !reflectAt.IsZero() {
				r.superseded++
			}
			if reflectAt.IsZero() {
				r.missing++
				continue
			}
			r.lat = append(r.lat, reflectAt.Sub(sent[i]))
			r.commit = append(r.commit, reflectCommit.Sub(srcAt[i]))
		}
	}
	return r, nil
}

// settleTime is how long after the last write the bench waits for every
// destination: 10 s, and more for wide fan-outs, whose destination writes
// take their time (a second per 10,000 of them offered).
func settleTime(bc benchConfig) time.Duration {
	offered := float64(bc.fanout) * float64(bc.rate) * bc.duration.Seconds()
	return 10*time.Second + time.Duration(offered/10000*float64(time.Second))
}

func quantileMS(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	i = max(0, min(i, len(s)-1))
	return math.Round(float64(s[i])/float64(time.Microsecond)) / 1000
}

func writeBench(w io.Writer, r benchResult) error {
	var b strings.Builder
	fmt.Fprintf(&b, "replication (%s): %d writes at %d/s for %.1fs, fan-out %d\n", r.Mode, r.Writes, r.Rate, r.DurationS, r.Fanout)
	if r.GraftdFrom == "own" {
		fmt.Fprintf(&b, "  measured: its own graftd --dev at %s, in a temporary directory\n", r.Graftd)
	} else {
		fmt.Fprintf(&b, "  measured: the graftd at %s (from %s; unset it to measure a graftd of its own)\n", r.Graftd, r.GraftdFrom)
	}
	fmt.Fprintf(&b, "  source commit → last destination commit (graftd's clock): p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", r.P50MS, r.P99MS, r.MaxMS)
	fmt.Fprintf(&b, "  source put sent → every copy seen by a watch: p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", r.SeenP50MS, r.SeenP99MS, r.SeenMaxMS)
	fmt.Fprintf(&b, "  destination writes: %d (%.0f/s); superseded %d, missing %d; the share took %.0f ms\n", r.DestinationWrites, r.DestinationWritesPerSec, r.Superseded, r.Missing, r.ShareMS)
	if r.FloorP50MS > 0 {
		fmt.Fprintf(&b, "  floor (2 etcd puts + 1 watch event, %s): p50 %.2f ms  p99 %.2f ms; seen/floor p50 %.2f  p99 %.2f\n", r.FloorVia, r.FloorP50MS, r.FloorP99MS, r.RatioP50, r.RatioP99)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
