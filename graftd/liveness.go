package graftd

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/graft-sh/graft/acl"
)

// Liveness probing. Every livenessEvery graftd commits a probe value and
// waits for it on the etcd watch stream its own watches share (tokens,
// policies, rules, the relay's change feed), and asks etcd for a progress
// notice on that stream, which the relay's feed must then receive. /readyz
// fails when either has not happened for livenessStale: a stuck watch path
// or replication that makes no progress, neither of which fails a call.
// Variables, so that a test need not wait 15 s for a stuck watch.
var (
	livenessEvery = 3 * time.Second
	livenessStale = 15 * time.Second
)

// liveness is what the probes last found.
type liveness struct {
	mu      sync.Mutex
	started time.Time
	watchOK time.Time
	lastErr error
}

func (l *liveness) record(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.watchOK = time.Now()
	}
	l.lastErr = err
}

// problems says what is stuck, for /readyz.
func (d *Daemon) livenessProblems() []string {
	var out []string
	l := &d.live
	l.mu.Lock()
	since := l.watchOK
	if since.IsZero() {
		since = l.started
	}
	if !since.IsZero() && time.Since(since) > livenessStale {
		msg := fmt.Sprintf("watches: no change has reached graftd's etcd watch for %s", time.Since(since).Round(time.Second))
		if l.lastErr != nil {
			msg += " (" + l.lastErr.Error() + ")"
		}
		out = append(out, msg)
	}
	l.mu.Unlock()
	if s := d.hub.Silence(); s > livenessStale {
		out = append(out, fmt.Sprintf("watches: etcd has not answered graftd's shared watch, which serves every client's watch, for %s", s.Round(time.Second)))
	}
	if s := d.relay.FeedSilence(); s > livenessStale {
		out = append(out, fmt.Sprintf("replication: the relay's change feed has delivered nothing for %s", s.Round(time.Second)))
	}
	return out
}

// probeLiveness runs the probes until ctx ends.
func (d *Daemon) probeLiveness(ctx context.Context) error {
	host, _ := os.Hostname()
	name := fmt.Sprintf("%s-%d-%s", host, os.Getpid(), acl.NewAccessor())
	d.live.mu.Lock()
	d.live.started = time.Now()
	d.live.mu.Unlock()
	t := time.NewTicker(livenessEvery)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, livenessEvery)
		d.store.RequestWatchProgress(pctx)
		d.hub.RequestProgress(pctx)
		err := d.store.ProbeWatch(pctx, name)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			d.log.Warn("liveness probe failed", "err", err)
		}
		d.live.record(err)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
