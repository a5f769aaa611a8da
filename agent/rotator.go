package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/mysql"
	"github.com/graft-sh/graft/dbcred/postgres"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// Rotations says which rotations the agent runs as a rotator: all it may
// rotate (the YAML string all), or those named (a list).
type Rotations struct {
	All   bool
	Names []string
}

// UnmarshalYAML takes `all` or a list of names.
func (r *Rotations) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Value != "all" {
			return fmt.Errorf("line %d: rotations: %q: want all, or a list of rotation names", n.Line, n.Value)
		}
		r.All = true
		return nil
	case yaml.SequenceNode:
		return n.Decode(&r.Names)
	}
	return fmt.Errorf("line %d: rotations: want all, or a list of rotation names", n.Line)
}

// Enabled reports whether the agent is a rotator.
func (r Rotations) Enabled() bool { return r.All || len(r.Names) > 0 }

func (r Rotations) wants(name string) bool {
	if r.All {
		return true
	}
	for _, n := range r.Names {
		if n == name {
			return true
		}
	}
	return false
}

// How the rotator looks for work and holds its claims.
const (
	// rotationLook is how often the rotator lists the rotations for one
	// that is due, asked for, or left in progress by a rotator that died.
	rotationLook = 500 * time.Millisecond
	// DefaultClaimTTL is how long a claim outlives a rotator that stops
	// renewing it: how soon another rotator takes over.
	DefaultClaimTTL = rotation.DefaultClaimTTL
)

// rotator claims and runs rotations.
type rotator struct {
	conn      *connection
	log       *slog.Logger
	rotations Rotations
	holder    string
	ttl       time.Duration
	runner    *rotation.Runner

	mu      sync.Mutex
	running map[string]bool
	denied  map[string]bool

	runs  *prometheus.CounterVec
	steps *prometheus.HistogramVec
	busy  prometheus.Gauge
}

// rotatorConfig is what a rotator is given: the agent's connection, its
// logger and metrics registry, and the rotator's part of the
// configuration.
type rotatorConfig struct {
	Conn      *connection
	Log       *slog.Logger
	Registry  prometheus.Registerer
	Holder    string // names the rotator in its claims
	Rotations Rotations
	ClaimTTL  time.Duration // default DefaultClaimTTL
	Hook      func(name string, b rotation.Boundary)
}

func newRotator(cfg rotatorConfig) *rotator {
	ttl := cfg.ClaimTTL
	if ttl == 0 {
		ttl = DefaultClaimTTL
	}
	holder := cfg.Holder
	r := &rotator{conn: cfg.Conn, log: cfg.Log, rotations: cfg.Rotations, holder: holder, ttl: ttl, running: map[string]bool{}, denied: map[string]bool{},
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "graft_agent_rotation_runs_total",
			Help: "Rotation runs this rotator finished, by rotation and outcome (done, failed: rolled back or could not begin).",
		}, []string{"rotation", "outcome"}),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "graft_agent_rotation_step_seconds",
			Help:    "How long each step of a rotation run took, from its start to its side effect done.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900},
		}, []string{"step"}),
		busy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "graft_agent_rotations_running", Help: "Rotations this rotator holds the claim of and is running now.",
		}),
	}
	cfg.Registry.MustRegister(r.runs, r.steps, r.busy)
	r.runner = rotation.NewRunner(rotation.RunnerConfig{
		Control:  control{cfg.Conn, holder},
		Values:   values{cfg.Conn},
		Open:     openDriver,
		Conflict: isConflict,
		Logger:   cfg.Log.With("subsystem", "rotator"),
		Hook:     cfg.Hook,
		Observe: func(_, step string, d time.Duration) {
			r.steps.WithLabelValues(step).Observe(d.Seconds())
		},
		Ended: func(name string, st rotation.State) {
			r.runs.WithLabelValues(name, string(st.Phase)).Inc()
		},
	})
	return r
}

// defaultHolder names a rotator in its claims: unique per process, so
// two rotators on one host never share a claim.
func defaultHolder(host string) string { return fmt.Sprintf("%s/%d", host, os.Getpid()) }

func openDriver(ctx context.Context, driver, dsn string) (dbcred.Driver, error) {
	switch driver {
	case rotation.DriverPostgres:
		return postgres.Open(ctx, dsn)
	case rotation.DriverMySQL:
		return mysql.Open(ctx, dsn)
	}
	return nil, fmt.Errorf("driver %q is not one this graft-agent has: want %s or %s", driver, rotation.DriverPostgres, rotation.DriverMySQL)
}

// isConflict: graftd refused a step because the claim or the state moved
// on, or the rotation is gone.
func isConflict(err error) bool {
	return errors.Is(err, sdk.ErrFailedPrecondition) || errors.Is(err, sdk.ErrNotFound)
}

// Run looks for work until ctx ends, and runs each rotation it claims in
// a goroutine of its own.
func (r *rotator) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(rotationLook)
	defer t.Stop()
	failing := false
	for {
		if err := r.look(ctx, &wg); err != nil && ctx.Err() == nil {
			if !failing {
				r.log.Warn("rotator: cannot list the rotations; trying again", "err", err)
			}
			failing = true
		} else {
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (r *rotator) look(ctx context.Context, wg *sync.WaitGroup) error {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var all []sdk.Rotation
	err := r.conn.call(lctx, func(c *sdk.Client) (err error) {
		all, err = c.ListRotations(lctx)
		return err
	})
	if err != nil {
		return err
	}
	now := time.Now()
	for _, rot := range all {
		name := rot.Spec.Name
		if !r.rotations.wants(name) || r.isRunning(name) {
			continue
		}
		if !rot.State.Phase.InProgress() && !rotation.Due(rot.Spec, rot.State.State, now) {
			continue
		}
		if rot.State.Holder != "" && rot.State.Holder != r.holder {
			continue // another rotator has it
		}
		c, err := r.claim(lctx, name)
		if errors.Is(err, sdk.ErrPermissionDenied) {
			r.deny(name, err)
			continue
		}
		if err != nil {
			r.log.Warn("rotator: cannot claim a rotation", "rotation", name, "err", err)
			continue
		}
		if !c.Held {
			continue
		}
		r.setRunning(name, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.setRunning(name, false)
			r.work(ctx, c)
		}()
	}
	return nil
}

func (r *rotator) deny(name string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.denied[name] {
		r.denied[name] = true
		r.log.Warn("rotator: may not rotate this rotation; give its identity the rotate action on the target", "rotation", name, "err", err)
	}
}

func (r *rotator) isRunning(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running[name]
}

func (r *rotator) setRunning(name string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running[name] = on
	if on {
		r.busy.Inc()
	} else {
		r.busy.Dec()
	}
}

// work runs one claimed rotation while renewing its claim, and gives the
// claim up when no run is left in progress.
func (r *rotator) work(ctx context.Context, c sdk.RotationClaim) {
	name := c.Rotation.Spec.Name
	log := r.log.With("rotation", name)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		r.renew(wctx, name, cancel)
	}()
	defer func() {
		cancel()
		<-renewed
		rctx, stop := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer stop()
		err := r.conn.call(rctx, func(c *sdk.Client) error { return c.ReleaseRotation(rctx, name, r.holder) })
		if err != nil && ctx.Err() == nil {
			log.Debug("rotator: could not release the claim; it expires by itself", "err", err)
		}
	}()
	for {
		_, err := r.runner.Run(wctx, c.Rotation.Spec, c.Rotation.State, c.Secrets)
		if !errors.Is(err, rotation.ErrClaimLost) || wctx.Err() != nil {
			if err != nil && wctx.Err() == nil {
				log.Error("rotator: run stopped", "err", err)
			}
			return
		}
		// The state moved on (paused meanwhile, or another replica's
		// write came first): read it again under the claim.
		cctx, stop := context.WithTimeout(wctx, 10*time.Second)
		c2, err := r.claim(cctx, name)
		stop()
		if err != nil || !c2.Held {
			log.Warn("rotator: lost the claim; another rotator or a later look takes over", "err", err)
			return
		}
		c = c2
	}
}

// renew keeps the claim alive every third of its TTL; when it cannot
// for a whole TTL, or another rotator holds it, it stops the run.
func (r *rotator) renew(ctx context.Context, name string, stop context.CancelFunc) {
	t := time.NewTicker(r.ttl / 3)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, r.ttl/3)
		c, err := r.claim(cctx, name)
		cancel()
		switch {
		case err == nil && c.Held:
			last = time.Now()
		case err == nil || errors.Is(err, sdk.ErrNotFound):
			r.log.Warn("rotator: the claim went to another rotator, or the rotation was deleted; stopping its run", "rotation", name, "holder", c.Holder)
			stop()
			return
		case time.Since(last) > r.ttl:
			r.log.Warn("rotator: could not renew the claim within its TTL; stopping the run so another rotator can take it", "rotation", name, "err", err)
			stop()
			return
		}
	}
}

// claim claims the rotation name, or renews the claim.
func (r *rotator) claim(ctx context.Context, name string) (c sdk.RotationClaim, err error) {
	err = r.conn.call(ctx, func(cl *sdk.Client) (err error) {
		c, err = cl.ClaimRotation(ctx, name, r.holder, r.ttl)
		return err
	})
	return c, err
}

// control is graftd, for the Runner.
type control struct {
	conn   *connection
	holder string
}

func (c control) Advance(ctx context.Context, name string, next rotation.View, secrets *rotation.Secrets) (rotation.View, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var rot sdk.Rotation
	err := c.conn.call(cctx, func(cl *sdk.Client) (err error) {
		rot, err = cl.AdvanceRotation(cctx, name, c.holder, next, secrets)
		return err
	})
	return rot.State, err
}

// values is the owner's tree, for the Runner.
type values struct{ conn *connection }

func (v values) ReadTree(ctx context.Context, path string) (map[string][]byte, int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var t sdk.Tree
	err := v.conn.call(cctx, func(c *sdk.Client) (err error) {
		t, err = c.ReadTree(cctx, path)
		return err
	})
	if errors.Is(err, sdk.ErrNotFound) {
		return map[string][]byte{}, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string][]byte, len(t.Entries))
	rev := int64(0)
	for _, e := range t.Entries {
		if rel, ok := strings.CutPrefix(e.Path, path+"/"); ok {
			out[rel] = e.Value
			rev = max(rev, e.Revision)
		}
	}
	return out, rev, nil
}

func (v values) PutTree(ctx context.Context, path string, vals map[string][]byte) (int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var es []sdk.Entry
	err := v.conn.call(cctx, func(c *sdk.Client) (err error) {
		es, err = c.PutTree(cctx, path, vals)
		return err
	})
	if err != nil {
		return 0, err
	}
	if len(es) == 0 {
		return 0, fmt.Errorf("put %s: graftd wrote nothing", path)
	}
	return es[0].Revision, nil
}

func (v values) Rollout(ctx context.Context, path string, rev int64) (rotation.Rollout, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var ro sdk.Rollout
	err := v.conn.call(cctx, func(c *sdk.Client) (err error) {
		ro, err = c.RolloutStatus(cctx, path, rev)
		return err
	})
	if err != nil {
		return rotation.Rollout{}, err
	}
	var out rotation.Rollout
	for _, c := range ro.Consumers {
		out.Consumers = append(out.Consumers, rotation.Consumer{App: c.Agent.App, ID: c.Agent.ID, OK: c.OK, Unhealthy: c.Unhealthy, Reason: c.Reason,
			Revision: c.Agent.Revision, Since: c.Agent.SinceRevision, BrokerOnly: c.BrokerOnly, OldSessions: c.OldSessions})
	}
	for _, c := range ro.Copies {
		if !c.Reached {
			out.Unreached = append(out.Unreached, c.Reason)
		}
	}
	return out, nil
}
