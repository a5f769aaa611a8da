package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// rotationPoll is how often rotation run --wait asks where the run stands.
const rotationPoll = 250 * time.Millisecond

// unstartedAfter is how long run --wait lets a run asked for wait for a
// rotator before it says none has started it: a rotator that runs claims
// a requested run within a second (it looks every 500 ms).
var unstartedAfter = 5 * time.Second

// waitRotation asks for a run and follows it: every rotationPoll, each
// call bounded by callLimit, until it is done (nil), failed (an error:
// exit 1) or timeout passes (exit 3). Progress lines go to stdout with
// -o table; -o json and yaml print only the rotation as it ended.
func (a *app) waitRotation(cmd *cobra.Command, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	c, err := a.Client(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	cctx, ccancel := context.WithTimeout(ctx, callLimit)
	r, err := c.RunRotation(cctx, name)
	ccancel()
	if err != nil {
		return err
	}
	want := r.State.Run + 1
	progress := io.Discard
	if a.Output == "table" {
		progress = a.Stdout
	}
	fmt.Fprintf(progress, "rotation %s: run %d asked for\n", name, want)
	p := &runProgress{w: progress, run: want}
	p.show(r.State)
	last := r
	asked, warned := time.Now(), false
	for {
		select {
		case <-ctx.Done():
			if cmd.Context().Err() != nil {
				return cmd.Context().Err()
			}
			return a.rotationTimedOut(name, timeout, want, last)
		case <-time.After(rotationPoll):
		}
		cctx, ccancel := context.WithTimeout(ctx, callLimit)
		r, err := c.GetRotation(cctx, name)
		ccancel()
		if err != nil {
			if ctx.Err() != nil {
				continue // time is up: the last answer stands
			}
			return err
		}
		last = r
		st := r.State
		p.show(st)
		if !warned && st.Phase == rotation.PhaseRequested && st.Holder == "" && time.Since(asked) >= unstartedAfter {
			fmt.Fprintf(progress, "  no rotator has started it after %s: %s\n", unstartedAfter, noRotatorHint)
			warned = true
		}
		if st.Run < want || st.Phase.InProgress() {
			continue
		}
		if st.Run > want {
			return fmt.Errorf("rotation %s: run %d ended and run %d followed before it was seen; see `graft rotation history %s`", name, want, st.Run, name)
		}
		if err := a.Emit(viewRotation(r), func(w io.Writer) error {
			if st.Phase == rotation.PhaseDone {
				_, err := fmt.Fprintf(w, "rotation %s: run %d done in %s: %s is active\n", name, want, dash(took(st.RunStarted, st.RunFinished)), st.ActiveUser)
				return err
			}
			return nil
		}); err != nil {
			return err
		}
		if st.Phase == rotation.PhaseDone {
			return nil
		}
		return fmt.Errorf("rotation %s: run %d %s: %s (active user %s; see `graft rotation history %s`)", name, want, st.Phase, dash(st.Reason), dash(st.ActiveUser), name)
	}
}

// rotationTimedOut shows where the run stood when --wait gave up, and
// exits 3.
func (a *app) rotationTimedOut(name string, timeout time.Duration, want int64, last sdk.Rotation) error {
	st := last.State
	where := string(st.Phase)
	if st.Run == want {
		if s, ok := st.Last(); ok {
			where += ", step " + s.Name
		}
	}
	why := ""
	switch {
	case st.Phase == rotation.PhaseRequested && st.Paused:
		why = fmt.Sprintf("; it is paused: `graft rotation resume %s`", name)
	case st.Phase == rotation.PhaseRequested && st.Holder == "":
		why = "; no rotator has started it: " + noRotatorHint
	case st.Stalled:
		why = "; " + stalledHint(st)
	}
	if err := a.Emit(viewRotation(last), func(io.Writer) error { return nil }); err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "graft: rotation %s: run %d not finished after %s (%s)%s\n", name, want, human(timeout), where, why)
	return exitCode(exitNotRolledOut)
}

func sameStep(a, b rotation.Step) bool {
	return a.Name == b.Name && a.Started.Equal(b.Started) && a.Finished.Equal(b.Finished) && a.Detail == b.Detail
}

// runProgress prints a line whenever the followed run's phase changes, a
// step begins, its detail changes or it finishes. "rolling back" comes
// before the rollback's first step, however many steps one look finds.
type runProgress struct {
	w           io.Writer
	run         int64
	rollingBack bool
	seen        []rotation.Step
}

func (p *runProgress) show(st rotation.View) {
	if st.Run != p.run {
		return // the run asked for has not started yet
	}
	for i, s := range st.Steps {
		if !p.rollingBack && isRollbackStep(s.Name) {
			p.rollBack(st)
		}
		var line string
		switch {
		case i < len(p.seen) && sameStep(p.seen[i], s):
			continue
		case s.Done():
			line = fmt.Sprintf("  %s %s finished in %s", tableTime(s.Finished), s.Name, dash(took(s.Started, s.Finished)))
		case i < len(p.seen) && p.seen[i].Name == s.Name && p.seen[i].Started.Equal(s.Started):
			// The step in progress says how far it has got.
			line = fmt.Sprintf("  %s %s", tableTime(time.Now()), s.Name)
		default:
			line = fmt.Sprintf("  %s %s started", tableTime(s.Started), s.Name)
		}
		if s.Detail != "" {
			line += ": " + s.Detail
		}
		fmt.Fprintln(p.w, line)
	}
	p.seen = append(p.seen[:0], st.Steps...)
	if !p.rollingBack && st.Phase == rotation.PhaseRollingBack {
		p.rollBack(st)
	}
}

// rollBack prints why the run rolls back: the reason it was given then,
// without what a failed rollback added later ("; then …", which the
// run's end prints).
func (p *runProgress) rollBack(st rotation.View) {
	p.rollingBack = true
	why, _, _ := strings.Cut(st.Reason, "; then ")
	fmt.Fprintf(p.w, "  rolling back: %s\n", dash(why))
}

func isRollbackStep(name string) bool {
	return name == rotation.StepRollbackPublish || name == rotation.StepRollbackRollout || name == rotation.StepRollbackDisable
}
