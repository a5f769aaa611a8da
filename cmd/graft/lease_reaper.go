package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) leaseReaperCmd(pause bool) *cobra.Command {
	use, short := "resume", "Let the reaper drop the users of expired leases again"
	if pause {
		use, short = "pause", "Hold the revocation of expired leases, on every graftd"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				paused, err := c.SetReaper(ctx, pause)
				if err != nil {
					return err
				}
				return a.Emit(map[string]any{"reaper_paused": paused}, func(w io.Writer) error {
					msg := "the reaper runs: the users of expired leases are dropped"
					if paused {
						msg = reaperPausedNote
					}
					_, err := fmt.Fprintln(w, msg)
					return err
				})
			})
		},
	}
}
