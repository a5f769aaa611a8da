package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

type ruleView struct {
	ID           string   `json:"id"`
	Source       string   `json:"source"`
	Destinations []string `json:"destinations"`
	Patterns     []string `json:"patterns,omitempty"`
	OnDelete     string   `json:"on_delete"`
	Author       string   `json:"author"`
	Created      string   `json:"created"`
}

func viewRule(r sdk.Rule) ruleView {
	return ruleView{ID: r.ID, Source: r.Source, Destinations: r.Destinations, Patterns: r.Patterns, OnDelete: r.OnDelete, Author: r.Author, Created: jsonTime(r.Created)}
}

// destinationsText is how a rule's destinations read in a line: its
// patterns with how many paths they stand for now, then the others.
func destinationsText(r sdk.Rule, sep string) string {
	if len(r.Patterns) == 0 {
		return strings.Join(r.Destinations, sep)
	}
	var others []string
	apps := map[string]bool{}
	for _, d := range r.Destinations {
		if slices.ContainsFunc(r.Patterns, func(p string) bool { return matchesPattern(p, d) }) {
			name, _, _ := strings.Cut(strings.TrimPrefix(d, "/app/"), "/")
			apps[name] = true
		} else {
			others = append(others, d)
		}
	}
	text := fmt.Sprintf("%s (in %s now)", strings.Join(r.Patterns, sep), plural(len(apps), "application", "applications"))
	return strings.Join(append([]string{text}, others...), sep)
}

// matchesPattern reports whether d is what pattern p (/app/+/rest) stands
// for in some application.
func matchesPattern(p, d string) bool {
	rest := strings.TrimPrefix(p, "/app/+")
	app, ok := strings.CutPrefix(d, "/app/")
	if !ok {
		return false
	}
	name, tail, _ := strings.Cut(app, "/")
	return name != "" && "/"+tail == rest
}

type sharedView struct {
	Rule   ruleView `json:"rule"`
	Filled int      `json:"filled"`
	// Existing says the share repeated a rule made before, which
	// graftd answered with rather than refusing.
	Existing bool `json:"existing"`
}

func (a *app) shareCmd() *cobra.Command {
	var (
		to       []string
		onDelete string
	)
	cmd := &cobra.Command{
		Use:   "share SOURCE --to DEST[,DEST...]",
		Short: "Copy a path, and everything below it, to applications' replicated trees",
		Long: `Create a replication rule: SOURCE and every path below it appear at the same
relative paths under each DEST, now and after every change. Destinations lie in
an application's replicated tree (/app/<name>/replicated/... unless graftd is
configured otherwise), and only the replicator writes them. The destinations
are filled before the command returns.

A destination of the form /app/+/PATH stands for PATH in every application's
tree: those graft knows now, and each that appears later, which gets its copy
before its first request is answered. An application appears when a token is
created for app:<name>, or when app:<name> first authenticates (with a client
certificate, or a token made before graft kept applications).

Sharing again exactly what a rule shares (the same source, destinations and
--on-delete) answers with that rule and creates none. Needs the share action
on SOURCE. A destination that overlaps another rule's,
a rule that would copy values back into their own source, or a destination
that already holds hand-written values is refused, naming the conflict.`,
		Example: `  graft share /dba/passpack/services/message-processor/mongo --to /app/message-processor/replicated/mongo
  graft share /shared/datadog/api-key --to /app/a/replicated/dd,/app/b/replicated/dd
  graft share /dba/reports/url --to /app/reports/replicated/url --on-delete retain
  graft share /shared/datadog/api-key --to '/app/+/replicated/datadog/api-key'   # every application, now and later`,
		Args: args(1, 1, "SOURCE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var dests []string
			for _, d := range to {
				if d = strings.TrimSpace(d); d != "" {
					dests = append(dests, d)
				}
			}
			if len(dests) == 0 {
				return fmt.Errorf("share %s: give at least one destination with --to (see 'graft share --help')", args[0])
			}
			if onDelete != "delete" && onDelete != "retain" {
				return fmt.Errorf("share: --on-delete %q: want delete or retain", onDelete)
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				asked := time.Now()
				r, n, err := c.Share(ctx, args[0], dests, sdk.ShareOptions{OnDelete: onDelete})
				if err != nil {
					return err
				}
				// graftd answers a share that repeats a rule with that
				// rule; a rule created before this call is such an answer.
				existing := r.Created.Before(asked)
				return a.Emit(sharedView{Rule: viewRule(r), Filled: n, Existing: existing}, func(w io.Writer) error {
					if existing {
						_, err := fmt.Fprintf(w, "rule %s already shares this: %s → %s (%s in place)\n", r.ID, r.Source, destinationsText(r, ", "), plural(n, "value", "values"))
						return err
					}
					_, err := fmt.Fprintf(w, "rule %s: %s → %s (%s copied)\n", r.ID, r.Source, destinationsText(r, ", "), plural(n, "value", "values"))
					return err
				})
			})
		},
	}
	cmd.Flags().StringSliceVar(&to, "to", nil, "destination path(s), comma separated or repeated")
	cmd.Flags().StringVar(&onDelete, "on-delete", "delete", "what deleting a source does to its copies: delete or retain")
	return cmd
}

func (a *app) rulesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rules",
		Short: "List and show replication rules",
		Args:  args(0, 0, "a subcommand"),
	}
	cmd.AddCommand(a.rulesListCmd(), a.rulesGetCmd())
	return cmd
}

func (a *app) rulesListCmd() *cobra.Command {
	var f sdk.RuleFilter
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the rules you may see (you may list their source or a destination)",
		Example: `  graft rules ls
  graft rules ls --source /dba/passpack
  graft rules ls --dest /app/message-processor`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				rules, err := c.ListRules(ctx, f)
				if err != nil {
					return err
				}
				views := make([]ruleView, 0, len(rules))
				for _, r := range rules {
					views = append(views, viewRule(r))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(rules) == 0 {
						_, err := fmt.Fprintln(a.stderr, "no rules")
						return err
					}
					tab := newTable(w, "ID", "SOURCE", "DESTINATIONS", "ON-DELETE", "AUTHOR", "CREATED")
					for _, r := range rules {
						tab.row(r.ID, r.Source, destinationsText(r, ","), r.OnDelete, r.Author, tableTime(r.Created))
					}
					return tab.flush()
				})
			})
		},
	}
	cmd.Flags().StringVar(&f.Source, "source", "", "only rules whose source is this path, above it or below it")
	cmd.Flags().StringVar(&f.Destination, "dest", "", "only rules with a destination at, above or below this path")
	return cmd
}

func (a *app) rulesGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one rule",
		Args:  args(1, 1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, err := c.GetRule(ctx, args[0])
				if err != nil {
					return err
				}
				return a.Emit(viewRule(r), func(w io.Writer) error {
					var b strings.Builder
					fmt.Fprintf(&b, "id: %s\nsource: %s\n", r.ID, r.Source)
					if len(r.Patterns) > 0 {
						fmt.Fprintf(&b, "patterns: %s (every application, including those that appear later)\n", strings.Join(r.Patterns, ", "))
					}
					fmt.Fprintf(&b, "destinations: %s\non-delete: %s\nauthor: %s\ncreated: %s\n",
						strings.Join(r.Destinations, ", "), r.OnDelete, r.Author, tableTime(r.Created))
					_, err := io.WriteString(w, b.String())
					return err
				})
			})
		},
	}
}

type unsharedView struct {
	Rule   ruleView `json:"rule"`
	Pruned int      `json:"pruned"`
	Orphan bool     `json:"orphan"`
}

func (a *app) unshareCmd() *cobra.Command {
	var orphan bool
	cmd := &cobra.Command{
		Use:   "unshare ID",
		Short: "Delete a replication rule and, unless --orphan, the copies it made",
		Long: `Delete the replication rule ID. Its copies are deleted too (their history is
kept), unless --orphan is given: then they stay as ordinary values that nothing
updates any more. Needs the share action on the rule's source.`,
		Example: `  graft unshare r-5kq2m7xw3a
  graft unshare r-5kq2m7xw3a --orphan`,
		Args: args(1, 1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, n, err := c.Unshare(ctx, args[0], orphan)
				if err != nil {
					return err
				}
				return a.Emit(unsharedView{Rule: viewRule(r), Pruned: n, Orphan: orphan}, func(w io.Writer) error {
					msg := fmt.Sprintf("unshared %s: deleted %s", r.ID, plural(int(n), "copy", "copies"))
					if orphan {
						msg = fmt.Sprintf("unshared %s: kept its copies as ordinary values", r.ID)
					}
					_, err := fmt.Fprintln(w, msg)
					return err
				})
			})
		},
	}
	cmd.Flags().BoolVar(&orphan, "orphan", false, "keep the copies as ordinary values")
	return cmd
}

type statusView struct {
	Path                  string     `json:"path"`
	Rule                  *ruleView  `json:"rule,omitempty"`
	Source                string     `json:"source,omitempty"`
	SourceRevision        int64      `json:"source_revision,omitempty"`
	AppliedSourceRevision int64      `json:"applied_source_revision,omitempty"`
	Applied               string     `json:"applied,omitempty"`
	DestinationRevision   int64      `json:"destination_revision,omitempty"`
	InSync                *bool      `json:"in_sync,omitempty"`
	LagMS                 *float64   `json:"lag_ms,omitempty"`
	LagFrom               string     `json:"lag_from,omitempty"` // "source" or "rule": what lag_ms counts from
	LastError             string     `json:"last_error,omitempty"`
	Attempts              int        `json:"attempts,omitempty"`
	LastErrorTime         string     `json:"last_error_time,omitempty"`
	Feeds                 []ruleView `json:"feeds,omitempty"`
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status PATH",
		Short: "Show how a path takes part in replication: its rule, source, lag and last error",
		Example: `  graft status /app/message-processor/replicated/mongo/password
  graft status /dba/passpack/services/message-processor/mongo/password   # the rules copying it`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				st, err := c.ReplicationStatus(ctx, args[0])
				if err != nil {
					return err
				}
				v := statusView{Path: st.Path}
				if st.Rule != nil {
					rv := viewRule(*st.Rule)
					v.Rule, v.Source, v.SourceRevision, v.AppliedSourceRevision = &rv, st.Source, st.SourceRevision, st.AppliedSourceRevision
					v.DestinationRevision, v.InSync = st.DestinationRevision, &st.InSync
					if !st.Applied.IsZero() {
						v.Applied = jsonTime(st.Applied)
						ms := float64(st.Lag) / float64(time.Millisecond)
						v.LagMS, v.LagFrom = &ms, lagFrom(st)
					}
					v.LastError, v.Attempts = st.LastError, st.Attempts
					if !st.LastErrorTime.IsZero() {
						v.LastErrorTime = jsonTime(st.LastErrorTime)
					}
				}
				for _, r := range st.Feeds {
					v.Feeds = append(v.Feeds, viewRule(r))
				}
				return a.Emit(v, func(w io.Writer) error { return writeStatus(w, st) })
			})
		},
	}
}

// lagFrom says what a destination's lag counts from: graftd measures a
// copy from the later of its source change and its rule's creation, so a
// first fill of a value older than the rule ("rule") is not replication lag.
func lagFrom(st sdk.ReplicationStatus) string {
	if st.Rule != nil && !st.Applied.Add(-st.Lag).After(st.Rule.Created) {
		return "rule"
	}
	return "source"
}

func writeStatus(w io.Writer, st sdk.ReplicationStatus) error {
	var b strings.Builder
	if st.Rule == nil && len(st.Feeds) == 0 {
		fmt.Fprintf(&b, "%s takes no part in replication\n", st.Path)
	}
	if r := st.Rule; r != nil {
		yes := map[bool]string{true: "yes", false: "no"}
		fmt.Fprintf(&b, "path:               %s\nrule:               %s\nsource:             %s\n", st.Path, r.ID, st.Source)
		fmt.Fprintf(&b, "source revision:    %s\ncopied from:        %s\ndestination:        %s\nin sync:            %s\n",
			revOrNone(st.SourceRevision, "(source deleted)"), revOrNone(st.AppliedSourceRevision, "-"), revOrNone(st.DestinationRevision, "(absent)"), yes[st.InSync])
		if !st.Applied.IsZero() {
			after := map[string]string{"source": "the source changed", "rule": "the rule was created"}[lagFrom(st)]
			fmt.Fprintf(&b, "last copied:        %s, %s after %s\n", tableTime(st.Applied), st.Lag.Round(100*time.Microsecond), after)
		}
		if st.LastError != "" {
			fmt.Fprintf(&b, "last error:         %s (%d attempts, parked %s)\n", st.LastError, st.Attempts, tableTime(st.LastErrorTime))
		}
	}
	if len(st.Feeds) > 0 {
		fmt.Fprintf(&b, "copied by:\n")
		for _, r := range st.Feeds {
			fmt.Fprintf(&b, "  %s → %s (rule %s)\n", r.Source, strings.Join(r.Destinations, ", "), r.ID)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func revOrNone(n int64, none string) string {
	if n == 0 {
		return none
	}
	return fmt.Sprintf("revision %d", n)
}

// plural is "1 copy", "2 copies".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
