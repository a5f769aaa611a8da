package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// auditRecordView is one audit record as -o json (one line each) and
// -o yaml show it.
type auditRecordView struct {
	Time      string `json:"time"`
	RequestID string `json:"request_id,omitempty"`
	Principal string `json:"principal"`
	Method    string `json:"method"`
	Action    string `json:"action,omitempty"`
	Path      string `json:"path,omitempty"`
	Result    string `json:"result"`
	Code      string `json:"code,omitempty"`
	Revision  int64  `json:"revision,omitempty"`
	Peer      string `json:"peer,omitempty"`
	ValueHMAC string `json:"value_hmac,omitempty"`
	Detail    string `json:"detail,omitempty"`
}

func (a *app) auditCmd() *cobra.Command {
	var (
		path, principal, since string
		limit                  int
	)
	cmd := &cobra.Command{
		Use:   "audit [--path PREFIX] [--principal P] [--since 1h|TIME] [--limit N]",
		Short: "Show who did what, where, and whether it was allowed",
		Long: `Print the audit records graftd keeps of every authenticated request,
allowed or denied, oldest first: the newest --limit of those matching the
filters. --path selects a path and everything below it; --since takes a
duration (that long ago, e.g. 1h or 30m) or an RFC3339 time. Values never
appear in the audit log: a write carries value_hmac, an HMAC of the value
under the cluster's audit key, to tell writes of the same value apart from
others. -o json prints one JSON object per line. Needs the admin action.`,
		Example: `  graft audit --path /dba/orders --since 1h
  graft audit --principal app:message-processor -o json | jq .`,
		Args: args(0, 0, "nothing (filter with --path, --principal and --since)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := sdk.AuditFilter{Principal: principal, Limit: limit}
			if path != "" {
				f.PathPrefix = trimPrefix(path)
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				f.Since = t
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				recs, err := c.QueryAudit(ctx, f)
				if err != nil {
					return err
				}
				return a.printAudit(recs)
			})
		},
	}
	cmd.Flags().StringVar(&path, "path", "", "only records at this path or below it")
	cmd.Flags().StringVar(&principal, "principal", "", "only records of this principal")
	cmd.Flags().StringVar(&since, "since", "", "only records since this long ago (1h) or this RFC3339 time")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many records, the newest (at most 10000)")
	return cmd
}

func (a *app) printAudit(recs []sdk.AuditRecord) error {
	views := make([]auditRecordView, 0, len(recs))
	for _, r := range recs {
		views = append(views, auditRecordView{
			Time:      jsonTime(r.Time),
			RequestID: r.RequestID,
			Principal: r.Principal,
			Method:    r.Method,
			Action:    r.Action,
			Path:      r.Path,
			Result:    r.Result,
			Code:      r.Code,
			Revision:  r.Revision,
			Peer:      r.Peer,
			ValueHMAC: r.ValueHMAC,
			Detail:    r.Detail,
		})
	}
	if a.Output == "json" {
		// One object per line, like a log: grep and jq take it as it is.
		for _, v := range views {
			if err := writeJSONLine(a.Stdout, v); err != nil {
				return err
			}
		}
		return nil
	}
	return a.Emit(views, func(w io.Writer) error {
		if len(recs) == 0 {
			_, err := fmt.Fprintln(a.stderr, "no audit records match")
			return err
		}
		tab := newTable(w, "TIME", "PRINCIPAL", "METHOD", "ACTION", "PATH", "RESULT", "REVISION")
		for _, r := range recs {
			result := r.Result
			if r.Code != "" && r.Code != "OK" {
				result += " (" + r.Code + ")"
			}
			tab.row(tableTime(r.Time), r.Principal, r.Method, dash(r.Action), dash(r.Path), result, rev(r.Revision))
		}
		return tab.flush()
	})
}

// parseSince reads --since: a duration means that long before now, else
// an RFC3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	t, ago, ok := timeOrAgo(s, now)
	switch {
	case !ok:
		return time.Time{}, fmt.Errorf("audit: --since %q is neither a duration such as 1h nor an RFC3339 time such as 2026-11-22T10:00:00Z", s)
	case ago < 0:
		return time.Time{}, fmt.Errorf("audit: --since %q: give a positive duration, meaning that long ago", s)
	}
	return t, nil
}

// dash is a text column's "-" for none.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
