package main

import (
	"context"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) dbcredRoleGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get PATH",
		Short: "Show a dynamic-credential role, or a copy of one: its statements, TTLs and limits",
		Long: `Show the role at PATH, or a copy of one shared into an application's tree
(then source says where it was written). Needs read on PATH.`,
		Example: `  graft dbcred role get /dba/pp/creds/ro
  graft dbcred role get /app/orders/replicated/creds/ro -o json`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, err := c.GetRole(ctx, trimPrefix(args[0]))
				if err != nil {
					return err
				}
				return a.Emit(viewRole(r), func(w io.Writer) error {
					var b strings.Builder
					writeRole(&b, r)
					_, err := io.WriteString(w, b.String())
					return err
				})
			})
		},
	}
}
