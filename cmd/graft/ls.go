package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// listItemView is one listed path as -o json and -o yaml show it: the
// fields of get's entry, flat, for a path with a value, and directory for
// one with paths below it (a path can be both).
type listItemView struct {
	Path string `json:"path"`
	*entryView
	Directory bool `json:"directory,omitempty"`
}

func (a *app) lsCmd() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "ls [PREFIX]",
		Short: "List the paths under a prefix",
		Long: `List the paths directly under PREFIX (default /, the whole tree), with
directories shown with a trailing /. -r lists every path below PREFIX.
Values are never listed.`,
		Example: `  graft ls /dba/orders
  graft ls /dba -r -o json`,
		Args: args(0, 1, "PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			prefix := "/"
			if len(args) == 1 {
				prefix = trimPrefix(args[0])
			}
			var opts []sdk.ListOption
			if recursive {
				opts = append(opts, sdk.Recursive())
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				items, err := c.List(ctx, prefix, opts...)
				if err != nil {
					return err
				}
				views := make([]listItemView, 0, len(items))
				for _, it := range items {
					v := listItemView{Path: it.Path, Directory: it.Directory}
					if it.Entry != nil {
						e := viewEntry(it.Entry, false)
						v.entryView = &e
					}
					views = append(views, v)
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(items) == 0 {
						_, err := fmt.Fprintf(a.stderr, "nothing under %s\n", prefix)
						return err
					}
					tab := newTable(w, "PATH", "REVISION", "AUTHOR", "UPDATED")
					for _, it := range items {
						// A path can hold a value and have paths below it:
						// it is then listed twice, as a key and as a directory.
						if e := it.Entry; e != nil {
							tab.row(it.Path, fmt.Sprint(e.Revision), e.Author, tableTime(e.Time))
						}
						if it.Directory {
							tab.row(it.Path+"/", "", "", "")
						}
					}
					return tab.flush()
				})
			})
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "list every path below the prefix")
	return cmd
}
