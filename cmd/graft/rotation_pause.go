package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) rotationPauseCmd(pause bool) *cobra.Command {
	use, short, done := "resume NAME", "Let a paused rotation run again", "resumed: runs asked for or due start again"
	if pause {
		use, short, done = "pause NAME", "Hold a rotation's new runs, asked for or due; a run in progress finishes", "paused: no new run starts until `graft rotation resume %[1]s`; a run in progress finishes"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				var (
					r   sdk.Rotation
					err error
				)
				if pause {
					r, err = c.PauseRotation(ctx, args[0])
				} else {
					r, err = c.ResumeRotation(ctx, args[0])
				}
				if err != nil {
					return err
				}
				return a.Emit(viewRotation(r), func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "rotation %s "+done+"\n", r.Spec.Name)
					return err
				})
			})
		},
	}
}
