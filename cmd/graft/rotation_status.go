package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) rotationStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status NAME",
		Short: "Show a rotation: its spec, phase, run, users, steps, consumers and flags",
		Example: `  graft rotation status message-processor-pg
  graft rotation status message-processor-pg -o json`,
		Args: args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, err := c.GetRotation(ctx, args[0])
				if err != nil {
					return err
				}
				return a.emitRotation(r)
			})
		},
	}
}
