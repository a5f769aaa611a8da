package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) rotationRmCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm NAME [--force]",
		Short: "Delete a rotation and its history; the database users and the published values stay",
		Long: `Delete the rotation NAME, its state and its history. The database users and
the values published at its target stay as they are. A rotation with a run
asked for or in progress is refused unless --force: then its rotator stops at
its next step, wherever the run stands.`,
		Example: `  graft rotation rm message-processor-pg
  graft rotation rm message-processor-pg --force   # even with a run in progress`,
		Args: args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				if err := c.DeleteRotation(ctx, args[0], force); err != nil {
					return err
				}
				return a.Emit(map[string]any{"name": args[0], "deleted": true}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "deleted rotation %s (its database users and published values stay)\n", args[0])
					return err
				})
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete it even with a run asked for or in progress")
	return cmd
}
