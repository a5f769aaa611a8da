package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
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
	// OutOfReach counts paths the caller may see but not change.
	OutOfReach int `json:"out_of_reach,omitempty"`
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
revision N (see graft history). A negative N counts versions back: -1 is the
version before the current one (or, for a deleted path, its last version).
History is never rewritten.

With --at, return every path under PREFIX to its state at TIME, an RFC3339
time (2026-11-22T10:00:00Z) or a duration meaning that long ago (10m, 2h):
paths changed since get their old value back,
paths created since are deleted, and paths whose state then is unknown
because history was trimmed are skipped. A time without fractional seconds
covers that whole second, as the times graft history shows do; use the
nanosecond times of -o json to pick between versions written within one
second. --dry-run prints the plan and changes nothing.`,
		Example: `  graft restore /dba/orders/postgres/password --revision 41
  graft restore /dba/orders/postgres/password --revision -1
  graft restore /dba/orders --at 10m --dry-run
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
			t, err := parseAt(at, time.Now())
			if err != nil {
				return err
			}
			return a.restorePrefix(cmd, trimPrefix(args[0]), t, dryRun)
		},
	}
	cmd.Flags().Int64Var(&revision, "revision", 0, "restore PATH to the value it had at this revision (-1: the version before the current one)")
	cmd.Flags().StringVar(&at, "at", "", "restore every path under PREFIX to its state at this RFC3339 time, or this long ago (10m)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "with --at: print the plan, change nothing")
	return cmd
}

// parseAt reads --at: a duration means that long before now, else an
// RFC3339 time. A time without fractional seconds means the end of that
// second, so that a version listed by graft history at 10:00:00Z is
// included by --at 10:00:00Z.
func parseAt(s string, now time.Time) (time.Time, error) {
	t, ago, ok := timeOrAgo(s, now)
	switch {
	case !ok:
		return time.Time{}, fmt.Errorf("restore: --at %q is neither a duration such as 10m (that long ago) nor an RFC3339 time such as 2026-11-22T10:00:00Z", s)
	case ago < 0:
		return time.Time{}, fmt.Errorf("restore: --at %q: give a positive duration, meaning that long ago", s)
	case ago == 0 && !strings.Contains(s, "."):
		t = t.Add(time.Second - time.Nanosecond)
	}
	return t, nil
}

// timeOrAgo reads a duration (that long before now, returned as ago) or an
// RFC3339 time (ago 0), as --since and --at take them.
func timeOrAgo(s string, now time.Time) (t time.Time, ago time.Duration, ok bool) {
	if d, err := time.ParseDuration(s); err == nil {
		if d == 0 {
			d = time.Nanosecond // "0s" is now, not a time
		}
		return now.Add(-d), d, true
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, 0, true
	}
	return time.Time{}, 0, false
}

// resolveRevision turns a negative --revision (-N: N versions back) into
// the revision it names, from the path's history.
func resolveRevision(ctx context.Context, c *sdk.Client, path string, revision int64) (int64, error) {
	if revision >= 0 {
		return revision, nil
	}
	items, err := c.History(ctx, path)
	if err != nil {
		return 0, err
	}
	items = slices.DeleteFunc(items, func(it sdk.HistoryItem) bool { return it.Deletion })
	if len(items) > 0 && items[0].Current {
		items = items[1:]
	}
	back := -revision
	if back > int64(len(items)) {
		return 0, fmt.Errorf("restore %s: --revision %d: it keeps only %d earlier version(s) (see graft history %s)", path, revision, len(items), path)
	}
	return items[back-1].Entry.Revision, nil
}

func (a *app) restorePath(cmd *cobra.Command, path string, revision int64) error {
	return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
		revision, err := resolveRevision(ctx, c, path, revision)
		if err != nil {
			return err
		}
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
		plan, err := c.RestorePrefix(ctx, prefix, at, dryRun)
		if err != nil {
			return err
		}
		steps := plan.Steps
		view := restorePrefixView{Prefix: prefix, At: jsonTime(at), DryRun: dryRun, Steps: make([]restoreStepView, 0, len(steps)), OutOfReach: plan.OutOfReach}
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
			if plan.OutOfReach > 0 {
				defer fmt.Fprintf(a.stderr, "note: left as they are: %s under %s that you may see but not change\n", plural(plan.OutOfReach, "path", "paths"), prefix)
			}
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
