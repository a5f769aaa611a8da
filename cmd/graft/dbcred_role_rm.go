package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) dbcredRoleRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm PATH",
		Aliases: []string{"delete"},
		Short:   "Delete a dynamic-credential role; its live leases stay until they expire or are revoked",
		Long: `Delete the role at PATH. No new user is issued from it (nor from its copies,
once replication removes them), but the users of its live leases stay until
their leases expire or are revoked: graft lease revoke --prefix PATH drops
them now. Needs delete on PATH.`,
		Example: `  graft dbcred role rm /dba/pp/creds/ro
  graft lease revoke --prefix /dba/pp/creds/ro   # and drop its users now`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := trimPrefix(args[0])
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				rev, err := c.DeleteRole(ctx, path)
				if err != nil {
					return err
				}
				return a.Emit(map[string]any{"path": path, "deleted": true, "revision": rev}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "deleted role %s at revision %d; its live leases stay until they expire or `graft lease revoke --prefix %s`\n", path, rev, path)
					return err
				})
			})
		},
	}
}
