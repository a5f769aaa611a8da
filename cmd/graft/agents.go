package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// callLimit bounds each call of rollout status --wait, which has its own
// --timeout for the whole wait.
const callLimit = 10 * time.Second

// exitNotRolledOut is rollout status's exit code when a consumer is not
// there yet (or --wait timed out).
const exitNotRolledOut = 3

type agentView struct {
	ID        string         `json:"id"`
	App       string         `json:"app"`
	Host      string         `json:"host"`
	Revision  int64          `json:"revision"`
	Healthy   bool           `json:"healthy"`
	Reason    string         `json:"reason,omitempty"`
	Time      string         `json:"time"`
	Principal string         `json:"principal"`
	Templates []templateView `json:"templates"`
	Reloads   []reloadView   `json:"reloads,omitempty"`

	// HTTPAddress serves the agent's /healthz, /readyz and /metrics.
	HTTPAddress string `json:"http_address,omitempty"`
	// Brokers are its credential broker's listeners.
	Brokers []brokerView `json:"brokers,omitempty"`
}

type brokerView struct {
	Listen   string         `json:"listen"`
	Keys     []string       `json:"keys,omitempty"`
	User     string         `json:"user,omitempty"`
	Sessions map[string]int `json:"sessions,omitempty"`
}

type templateView struct {
	Destination string   `json:"destination"`
	SHA256      string   `json:"sha256,omitempty"`
	Keys        []string `json:"keys,omitempty"`
	Error       string   `json:"error,omitempty"`
}

type reloadView struct {
	Kind  string `json:"kind"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func viewAgent(r sdk.AgentReport) agentView {
	v := agentView{ID: r.ID, App: r.App, Host: r.Host, Revision: r.Revision, Healthy: r.Healthy, Reason: r.Reason, Time: jsonTime(r.Time), Principal: r.Principal, HTTPAddress: r.HTTPAddress, Templates: []templateView{}}
	for _, t := range r.Templates {
		v.Templates = append(v.Templates, templateView(t))
	}
	for _, l := range r.Reloads {
		v.Reloads = append(v.Reloads, reloadView(l))
	}
	for _, b := range r.Brokers {
		v.Brokers = append(v.Brokers, brokerView(b))
	}
	return v
}

func health(r sdk.AgentReport) string {
	if r.Healthy {
		return "healthy"
	}
	return "unhealthy"
}

func (a *app) agentsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "Show what graft-agents report they run",
		Args:  args(0, 0, "a subcommand"),
	}
	var app string
	ls := &cobra.Command{
		Use:     "ls [--app APP]",
		Aliases: []string{"list"},
		Short:   "List live agents: the revision each renders from, its files, reloads and health",
		Long: `List the graft-agents that are reporting, of applications whose tree you may
list. An agent reports after every render, when it connects again and every
30 s. Its report stays while its connection to graftd is open; one whose
connection closed drops out within 15 s (a host that vanished without
closing it, once keepalive finds the connection dead).`,
		Example: `  graft agents ls
  graft agents ls --app message-processor -o json`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				reps, err := c.ListAgents(ctx, app)
				if err != nil {
					return err
				}
				views := make([]agentView, 0, len(reps))
				for _, r := range reps {
					views = append(views, viewAgent(r))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(reps) == 0 {
						_, err := fmt.Fprintln(a.stderr, "no agents are reporting")
						return err
					}
					tab := newTable(w, "APP", "ID", "HOST", "HTTP", "REVISION", "FILES", "HEALTH", "REPORTED")
					for _, r := range reps {
						failed := 0
						for _, t := range r.Templates {
							if t.Error != "" {
								failed++
							}
						}
						files := fmt.Sprint(len(r.Templates))
						if failed > 0 {
							files += fmt.Sprintf(" (%d failed)", failed)
						}
						h := health(r)
						if r.Reason != "" {
							h += ": " + r.Reason
						}
						addr := r.HTTPAddress
						if addr == "" {
							addr = "-"
						}
						tab.row(r.App, r.ID, r.Host, addr, fmt.Sprint(r.Revision), files, h, tableTime(r.Time))
					}
					return tab.flush()
				})
			})
		},
	}
	ls.Flags().StringVar(&app, "app", "", "only this application's agents")
	cmd.AddCommand(ls)
	return cmd
}

type consumerView struct {
	Agent  agentView `json:"agent"`
	Reads  string    `json:"reads"`
	OK     bool      `json:"ok"`
	Reason string    `json:"reason,omitempty"`
	// BrokerOnly: it uses the value only through its credential broker;
	// OldSessions are the broker's sessions still open as another user.
	BrokerOnly  bool `json:"broker_only,omitempty"`
	OldSessions int  `json:"old_sessions,omitempty"`
}

type rolloutView struct {
	Path      string         `json:"path"`
	Revision  int64          `json:"revision"`
	Complete  bool           `json:"complete"`
	Consumers []consumerView `json:"consumers"`
}

func (a *app) rolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "See whether a value has rolled out to every application that uses it",
		Args:  args(0, 0, "a subcommand"),
	}
	var (
		revision  int64
		wait      bool
		allowNone bool
		timeout   time.Duration
	)
	status := &cobra.Command{
		Use:   "status PATH [--revision R] [--wait [--timeout T]] [--allow-none]",
		Short: "List every consumer of PATH and whether it runs revision R or newer, healthy",
		Long: `List every consumer of PATH: each graft-agent whose templates read PATH or a
copy of it that replication makes. For each it says whether the agent renders
from revision R of the value or a newer one (R is PATH's current revision
unless --revision is given), without a failed template, and is healthy.

It exits 0 only when every consumer is; otherwise 3. With --wait it asks
again until they all are, or --timeout passes (then exit 3):

  graft rollout status /dba/passpack/services/message-processor/mongo/password --wait --timeout 10m && retire-old-user

A path no consumer reports (no agent reads it, or its only agent died or
has not reported yet) has not rolled out anywhere: that is exit 3 too, and
--wait waits for a consumer until --timeout. --allow-none accepts it, for
a script that means it.`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return fmt.Errorf("rollout status: --timeout %s: want a positive duration such as 10m", timeout)
			}
			if !wait {
				return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
					r, err := c.RolloutStatus(ctx, args[0], revision)
					if err != nil {
						return err
					}
					return a.finishRollout(args[0], r, allowNone)
				})
			}
			// --wait: asking again until --timeout, each call bounded by
			// the call time limit; when time is up the last answer stands.
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c, err := a.Client(ctx, cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			var last *sdk.Rollout
			for {
				cctx, ccancel := context.WithTimeout(ctx, callLimit)
				r, err := c.RolloutStatus(cctx, args[0], revision)
				ccancel()
				switch {
				case err == nil:
					last, revision = &r, r.Revision // keep asking about the same revision
					if rolledOut(r, allowNone) {
						return a.finishRollout(args[0], r, allowNone)
					}
				case ctx.Err() == nil || last == nil:
					return err
				}
				select {
				case <-ctx.Done():
					return a.finishRollout(args[0], *last, allowNone)
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}
	status.Flags().Int64Var(&revision, "revision", 0, "the revision of PATH to look for (default: its current revision)")
	status.Flags().BoolVar(&wait, "wait", false, "ask again until every consumer runs it, or --timeout passes")
	status.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long --wait waits")
	status.Flags().BoolVar(&allowNone, "allow-none", false, "exit 0 when no consumer reports PATH (by default that is exit 3: nothing runs it)")
	cmd.AddCommand(status)
	return cmd
}

// rolledOut says whether every consumer runs r's revision. With no
// consumer, nothing does, unless the caller allowed none: an agent that
// died or has not reported yet is not a rollout (a retire after such a
// "0 of 0" took an application down).
func rolledOut(r sdk.Rollout, allowNone bool) bool {
	return r.Complete && (len(r.Consumers) > 0 || allowNone)
}

// finishRollout shows r and exits 3 unless every consumer runs it, or
// there is none and allowNone.
func (a *app) finishRollout(path string, r sdk.Rollout, allowNone bool) error {
	done := rolledOut(r, allowNone)
	r.Complete = done
	if err := a.emitRollout(path, r); err != nil {
		return err
	}
	if len(r.Consumers) == 0 && !allowNone {
		fmt.Fprintf(a.stderr, "graft: rollout status: no consumer reports %s: no graft-agent that reads it or a copy of it is reporting (not started, dead, or not reported yet), so nothing runs revision %d; --allow-none if that is what you mean\n", path, r.Revision)
	}
	if !done {
		return exitCode(exitNotRolledOut)
	}
	return nil
}

func (a *app) emitRollout(path string, r sdk.Rollout) error {
	v := rolloutView{Path: path, Revision: r.Revision, Complete: r.Complete, Consumers: []consumerView{}}
	for _, con := range r.Consumers {
		v.Consumers = append(v.Consumers, consumerView{Agent: viewAgent(con.Agent), Reads: con.Reads, OK: con.OK, Reason: con.Reason,
			BrokerOnly: con.BrokerOnly, OldSessions: con.OldSessions})
	}
	return a.Emit(v, func(w io.Writer) error {
		var b strings.Builder
		ok := 0
		for _, con := range r.Consumers {
			if con.OK {
				ok++
			}
		}
		fmt.Fprintf(&b, "%s revision %d: %d of %d consumers run it\n", printable(path), r.Revision, ok, len(r.Consumers))
		for _, con := range r.Consumers {
			state := "ok"
			if !con.OK {
				state = "waiting: " + con.Reason
			}
			if con.BrokerOnly {
				state += fmt.Sprintf(" (through its broker; %d sessions still open as an older user)", con.OldSessions)
			}
			// Agents chose these texts: escape what a terminal would act on.
			fmt.Fprintf(&b, "  %s/%s (%s) reads %s at revision %d: %s\n", printable(con.Agent.App), printable(con.Agent.ID), printable(con.Agent.Host), printable(con.Reads), con.Agent.Revision, printable(state))
		}
		_, err := io.WriteString(w, b.String())
		return err
	})
}
