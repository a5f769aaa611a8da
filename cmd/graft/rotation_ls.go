package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) rotationListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the rotations you may see (you may list or rotate their target)",
		Example: `  graft rotation ls
  graft rotation ls -o yaml`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				rots, err := c.ListRotations(ctx)
				if err != nil {
					return err
				}
				views := make([]rotationView, 0, len(rots))
				for _, r := range rots {
					views = append(views, viewRotation(r))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(rots) == 0 {
						_, err := fmt.Fprintln(a.stderr, "no rotations")
						return err
					}
					tab := newTable(w, "NAME", "DRIVER", "TARGET", "PHASE", "ACTIVE", "LAST-SUCCESS", "NEXT-DUE", "FLAGS")
					for _, r := range rots {
						st := r.State
						tab.row(r.Spec.Name, r.Spec.Driver, r.Spec.Target, string(st.Phase), dash(st.ActiveUser),
							tableTime(st.LastSuccess), tableTime(st.NextDue), flagsText(st))
					}
					return tab.flush()
				})
			})
		},
	}
}
