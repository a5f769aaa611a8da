package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// historyItemView is one version as -o json and -o yaml show it.
type historyItemView struct {
	entryView
	Current bool   `json:"current"`
	Ended   string `json:"ended,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
}

func (a *app) historyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "history PATH",
		Short: "List the retained versions of a path, newest first",
		Long: `List the versions of PATH that graftd keeps, newest first, without their
values. NOTE says which version is current, which one ended with a
deletion, and which were written by a restore. Read an old value with
'graft get PATH --revision N'; bring it back with 'graft restore PATH
--revision N'.`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				items, err := c.History(ctx, args[0])
				if err != nil {
					return err
				}
				views := make([]historyItemView, 0, len(items))
				for _, it := range items {
					views = append(views, historyItemView{
						entryView: viewEntry(&it.Entry, false),
						Current:   it.Current,
						Ended:     jsonTime(it.Ended),
						Deleted:   it.Deleted,
					})
				}
				return a.Emit(views, func(w io.Writer) error {
					tab := newTable(w, "REVISION", "TIME", "AUTHOR", "NOTE")
					for _, it := range items {
						tab.row(fmt.Sprint(it.Entry.Revision), tableTime(it.Entry.Time), it.Entry.Author, historyNote(it))
					}
					return tab.flush()
				})
			})
		},
	}
}

// historyNote is the NOTE column: current / deleted / restored from rev N.
func historyNote(it sdk.HistoryItem) string {
	var notes []string
	if it.Current {
		notes = append(notes, "current")
	}
	if it.Deleted {
		notes = append(notes, "deleted")
	}
	if o := it.Entry.Origin; o != nil {
		switch {
		case o.Kind == "restore":
			notes = append(notes, fmt.Sprintf("restored from rev %d", o.SourceRevision))
		case o.RuleID != "":
			notes = append(notes, fmt.Sprintf("%s by rule %s from %s rev %d", o.Kind, o.RuleID, o.SourcePath, o.SourceRevision))
		default:
			notes = append(notes, o.Kind)
		}
	}
	return strings.Join(notes, ", ")
}
