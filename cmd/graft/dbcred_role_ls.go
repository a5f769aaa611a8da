package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) dbcredRoleListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls [PREFIX]",
		Aliases: []string{"list"},
		Short:   "List the dynamic-credential roles, and copies of roles, at and below PREFIX that you may read",
		Example: `  graft dbcred role ls /dba/pp
  graft dbcred role ls /app/orders -o json`,
		Args: args(0, 1, "PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			prefix := "/"
			if len(args) == 1 {
				prefix = trimPrefix(args[0])
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				roles, err := c.ListRoles(ctx, prefix)
				if err != nil {
					return err
				}
				views := make([]roleView, 0, len(roles))
				for _, r := range roles {
					views = append(views, viewRole(r))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(roles) == 0 {
						_, err := fmt.Fprintf(a.stderr, "no roles at or below %s\n", prefix)
						return err
					}
					tab := newTable(w, "PATH", "DRIVER", "ADMIN", "DEFAULT-TTL", "MAX-TTL", "SOURCE")
					for _, r := range roles {
						tab.row(r.Path, r.Role.Driver, dash(r.Role.Admin), human(r.Role.DefaultTTL), human(r.Role.MaxTTL), dash(r.Source))
					}
					return tab.flush()
				})
			})
		},
	}
}
