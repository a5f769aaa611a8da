package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) rotationRunCmd() *cobra.Command {
	var (
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "run NAME [--wait [--timeout T]]",
		Short: "Ask for a run now; with --wait, follow it until it is done or failed",
		Long: `Ask for a run of NAME now. The rotator holding the rotation (a graft-agent
with rotations: in its configuration) starts it within about a second.
Refused while the rotation is paused or a run is already in progress.

With --wait it follows the run, printing each step as it begins, changes and
finishes, and exits 0 when the run is done, 1 when it failed (after rolling
back; the reason is printed), and 3 when --timeout passes first:

  graft rotation run message-processor-pg --wait --timeout 15m`,
		Args: args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !wait {
				return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
					r, err := c.RunRotation(ctx, name)
					if err != nil {
						return err
					}
					return a.Emit(viewRotation(r), func(w io.Writer) error {
						_, err := fmt.Fprintf(w, "rotation %s: run %d asked for; follow it with `graft rotation status %s`\n", name, r.State.Run+1, name)
						return err
					})
				})
			}
			if timeout <= 0 {
				return fmt.Errorf("rotation run: --timeout %s: want a positive duration such as 15m", timeout)
			}
			return a.waitRotation(cmd, name, timeout)
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the run until it is done or failed, or --timeout passes")
	cmd.Flags().DurationVar(&timeout, "timeout", 15*time.Minute, "how long --wait waits")
	return cmd
}
