package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) rotationHistoryCmd() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "history NAME [--limit N]",
		Short: "List a rotation's finished runs, newest first",
		Example: `  graft rotation history message-processor-pg
  graft rotation history message-processor-pg --limit 5 -o json   # with each run's steps`,
		Args: args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 1 || limit > 1000 {
				return fmt.Errorf("rotation history: --limit %d: want 1 to 1000", limit)
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				runs, err := c.RotationHistory(ctx, args[0], limit)
				if err != nil {
					return err
				}
				views := make([]runView, 0, len(runs))
				for _, r := range runs {
					views = append(views, viewRun(r))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(runs) == 0 {
						_, err := fmt.Fprintf(a.stderr, "rotation %s has no finished runs\n", args[0])
						return err
					}
					tab := newTable(w, "RUN", "OUTCOME", "NEW-USER", "ACTIVE-USER", "STARTED", "TOOK", "REASON")
					for _, r := range runs {
						tab.row(fmt.Sprint(r.Run), string(r.Outcome), dash(r.NewUser), dash(r.ActiveUser), tableTime(r.Started),
							dash(took(r.Started, r.Finished)), dash(r.Reason))
					}
					return tab.flush()
				})
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 20, "at most this many runs (1 to 1000)")
	return cmd
}
