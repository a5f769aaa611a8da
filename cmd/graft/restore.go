package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

type restorePrefixView struct {
	Prefix string            `json:"prefix"`
	At     string            `json:"at"`
	DryRun bool              `json:"dry_run"`
	Steps  []restoreStepView `json:"steps"`
}

type restoreStepView struct {
	Path         string `json:"path"`
	Action       string `json:"action"`
	FromRevision int64  `json:"from_revision,omitempty"`
	ToRevision   int64  `json:"to_revision,omitempty"`
	NewRevision  int64  `json:"new_revision,omitempty"`
	Reason       string `json:"reason,omitempty"`
}

func (a *app) restoreCmd() *cobra.Command {
	var (
		revision int64
		at       string
		dryRun   bool
	)
	cmd := &cobra.Command{
		Use:   "restore PATH --revision N | restore PREFIX --at TIME [--dry-run]",
		Short: "Bring back an old value, or a whole prefix as it was at a time",
		Long: `With --revision, write a new revision of PATH holding the value it had at
revision N (see graft history). History is never rewritten.

With --at, return every path under PREFIX to its state at TIME (RFC3339,
e.g. 2026-11-22T10:00:00Z): paths changed since get their old value back,
paths created since are deleted, and paths whose state then is unknown
because history was trimmed are skipped. A time without fractional seconds
covers that whole second, as the times graft history shows do; use the
nanosecond times of -o json to pick between versions written within one
second. --dry-run prints the plan and changes nothing.`,
		Example: `  graft restore /dba/orders/postgres/password --revision 41
  graft restore /dba/orders --at 2026-11-22T10:00:00Z --dry-run
  graft restore /dba/orders --at 2026-11-22T10:00:00Z`,
		Args: args(1, 1, "PATH or PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			byRevision, byTime := cmd.Flags().Changed("revision"), cmd.Flags().Changed("at")
			switch {
			case byRevision == byTime:
				return errors.New("restore: give exactly one of --revision N (one path) or --at TIME (a whole prefix)")
			case dryRun && byRevision:
				return errors.New("restore: --dry-run goes with --at; a --revision restore changes one path, shown by graft get PATH --revision N")
			}
			if byRevision {
				return a.restorePath(cmd, args[0], revision)
			}
			t, err := parseAt(at)
			if err != nil {
				return err
			}
			return a.restorePrefix(cmd, trimPrefix(args[0]), t, dryRun)
		},
	}
	cmd.Flags().Int64Var(&revision, "revision", 0, "restore PATH to the value it had at this revision")
	cmd.Flags().StringVar(&at, "at", "", "restore every path under PREFIX to its state at this RFC3339 time")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "with --at: print the plan, change nothing")
	return cmd
}

// parseAt reads an RFC3339 time. Without fractional seconds it means the
// end of that second, so that a version listed by graft history at
// 10:00:00Z is included by --at 10:00:00Z.
func parseAt(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("restore: --at %q is not an RFC3339 time such as 2026-11-22T10:00:00Z", s)
	}
	if !strings.Contains(s, ".") {
		t = t.Add(time.Second - time.Nanosecond)
	}
	return t, nil
}

func (a *app) restorePath(cmd *cobra.Command, path string, revision int64) error {
	return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
		e, err := c.Restore(ctx, path, revision)
		if err != nil {
			return err
		}
		return a.Emit(viewEntry(e, false), func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "%s revision %d (restored from revision %d)\n", e.Path, e.Revision, revision)
			return err
		})
	})
}

func (a *app) restorePrefix(cmd *cobra.Command, prefix string, at time.Time, dryRun bool) error {
	return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
		steps, err := c.RestorePrefix(ctx, prefix, at, dryRun)
		if err != nil {
			return err
		}
		view := restorePrefixView{Prefix: prefix, At: jsonTime(at), DryRun: dryRun, Steps: make([]restoreStepView, 0, len(steps))}
		counts := map[sdk.RestoreAction]int{}
		for _, s := range steps {
			counts[s.Action]++
			view.Steps = append(view.Steps, restoreStepView{
				Path:         s.Path,
				Action:       s.Action.String(),
				FromRevision: s.FromRevision,
				ToRevision:   s.ToRevision,
				NewRevision:  s.NewRevision,
				Reason:       s.Reason,
			})
		}
		return a.Emit(view, func(w io.Writer) error {
			when := at.UTC().Format(time.RFC3339)
			if len(steps) == 0 {
				_, err := fmt.Fprintf(w, "nothing to do: %s is already as it was at %s\n", prefix, when)
				return err
			}
			tab := newTable(w, "ACTION", "PATH", "FROM", "TO", "NEW", "REASON")
			for _, s := range steps {
				tab.row(s.Action.String(), s.Path, rev(s.FromRevision), rev(s.ToRevision), rev(s.NewRevision), s.Reason)
			}
			if err := tab.flush(); err != nil {
				return err
			}
			restored, deleted, skipped := counts[sdk.RestoreActionRestore], counts[sdk.RestoreActionDelete], counts[sdk.RestoreActionSkip]
			var err error
			if dryRun {
				_, err = fmt.Fprintf(w, "dry run: would restore %d, delete %d and skip %d paths under %s as of %s; nothing was changed\n", restored, deleted, skipped, prefix, when)
			} else {
				_, err = fmt.Fprintf(w, "restored %d, deleted %d and skipped %d paths under %s as of %s\n", restored, deleted, skipped, prefix, when)
			}
			return err
		})
	})
}
