package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/graft-sh/graft/sdk"
)

var _ subscribers = (*bareStreams)(nil)

// bareStreams are what graft-bench agents --bare runs instead of agents:
// one sdk watch stream per application, each on its own connection with
// the application's token as an agent has, and nothing else. No files, no
// reports: set against a run with agents, the delivery figures show how
// much of the time the agents themselves take on a machine they share
// with graftd.
type bareStreams struct {
	addr, run    string
	apps, tokens []string

	// updates carries each time a stream's key took a value, timestamped
	// on receipt in the stream's own goroutine (no sweep between).
	updates chan keyUpdate
	// failed carries the error of each stream that ended before stop.
	failed  chan error
	cancel  context.CancelFunc
	running sync.WaitGroup
}

// keyUpdate is one stream's replicated key taking a value, from its
// snapshot or from an event.
type keyUpdate struct {
	stream int
	value  string
	at     time.Time
}

func (b *bareStreams) start(ctx context.Context, want string) (sweeps, error) {
	// A stream sends its snapshot's value and one update per event on its
	// key: v0 at most once more, then v1. Room for four each means no
	// stream waits on the benchmark to take its receipt.
	b.updates = make(chan keyUpdate, 4*len(b.apps))
	b.failed = make(chan error, len(b.apps))
	sctx, cancel := context.WithCancel(ctx)
	b.cancel = cancel
	for i := range b.apps {
		b.running.Go(func() {
			if err := b.follow(sctx, i); err != nil && sctx.Err() == nil {
				b.failed <- fmt.Errorf("stream %d (%s): %w", i, b.apps[i], err)
			}
		})
	}
	return b.wait(ctx, want)
}

// follow reads the application's tree, watches it from the snapshot's
// revision (sdk.Watch returns once graftd confirmed the watch, so the key
// is reported only then) and reports every value its key takes.
func (b *bareStreams) follow(ctx context.Context, i int) error {
	c, err := sdk.New(ctx, sdk.Config{Addr: b.addr, Token: b.tokens[i], Insecure: true})
	if err != nil {
		return err
	}
	defer c.Close()
	root := "/app/" + b.apps[i]
	key := root + "/replicated/" + b.run + "/password"
	tree, err := c.ReadTree(ctx, root)
	if err != nil {
		return fmt.Errorf("read %s: %w", root, err)
	}
	events := c.Watch(ctx, root, tree.Revision+1)
	for _, e := range tree.Entries {
		if e.Path == key {
			b.report(ctx, keyUpdate{stream: i, value: string(e.Value), at: time.Now()})
		}
	}
	for resp := range events {
		at := time.Now()
		if resp.Err != nil {
			return fmt.Errorf("watch %s: %w", root, resp.Err)
		}
		for _, ev := range resp.Events {
			if ev.Type == sdk.EventPut && ev.Entry.Path == key {
				b.report(ctx, keyUpdate{stream: i, value: string(ev.Entry.Value), at: at})
			}
		}
	}
	return fmt.Errorf("watch %s ended", root)
}

// report hands u to wait; it blocks only if the benchmark is stopping.
func (b *bareStreams) report(ctx context.Context, u keyUpdate) {
	select {
	case b.updates <- u:
	case <-ctx.Done():
	}
}

func (b *bareStreams) wait(ctx context.Context, want string) (sweeps, error) {
	const timeout = 5 * time.Minute
	s := sweeps{at: make([]time.Time, len(b.apps))}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for left := len(b.apps); left > 0; {
		select {
		case u := <-b.updates:
			if u.value == want && s.at[u.stream].IsZero() {
				s.at[u.stream] = u.at
				left--
			}
		case err := <-b.failed:
			return s, err
		case <-deadline.C:
			return s, fmt.Errorf("%d of %d streams did not receive the value after %s", left, len(b.apps), timeout)
		case <-ctx.Done():
			return s, ctx.Err()
		}
	}
	return s, nil
}

func (b *bareStreams) stop() {
	if b.cancel != nil {
		b.cancel()
	}
	b.running.Wait()
}
