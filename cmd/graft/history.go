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
	// Deleted: this version ended with a deletion; Deletion: this row is
	// the deletion itself, at its own revision.
	Deleted  bool `json:"deleted,omitempty"`
	Deletion bool `json:"deletion,omitempty"`
}

func (a *app) historyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "history PATH",
		Short: "List the retained versions of a path, newest first",
		Long: `List the changes of PATH that graftd keeps, newest first, each with its own
revision: its versions, without their values, and its deletions. NOTE says
which version is current, which rows are deletions, and which versions
were written by a restore or copied by a rule. Read an old value with
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
						Deletion:  it.Deletion,
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
	if it.Deletion {
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
