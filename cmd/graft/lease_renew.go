package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) leaseRenewCmd() *cobra.Command {
	var increment time.Duration
	cmd := &cobra.Command{
		Use:   "renew LEASE_ID [--increment DURATION]",
		Short: "Extend a lease, never past its role's max TTL",
		Long: `Extend the lease LEASE_ID to --increment from now (default: its role's
default TTL), never past the end its role's max TTL sets from its issue;
the answer says when that is. A lease that reached it cannot be renewed:
issue a new credential. Its holder may renew it.`,
		Example: `  graft lease renew k3qz7x2m4vdp6hy5n8wb9tc2ra
  graft lease renew k3qz7x2m4vdp6hy5n8wb9tc2ra --increment 30m`,
		Args: args(1, 1, "LEASE_ID (see `graft lease ls`)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if increment < 0 {
				return fmt.Errorf("lease renew: --increment %s is negative: leave it out for the role's default TTL, or give a duration such as 30m", increment)
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				l, err := c.RenewLease(ctx, args[0], increment)
				if err != nil {
					return err
				}
				return a.Emit(viewLease(l), func(w io.Writer) error {
					end := fmt.Sprintf("it ends for good at %s", tableTime(l.MaxExpireTime))
					if !l.Renewable {
						end = "it has reached its role's max TTL: no renewal extends it further; issue a new credential before then"
					}
					_, err := fmt.Fprintf(w, "renewed lease %s (user %s): expires %s; %s\n", l.ID, printable(l.Username), tableTime(l.ExpireTime), end)
					return err
				})
			})
		},
	}
	cmd.Flags().DurationVar(&increment, "increment", 0, "how long from now (default: the role's default TTL)")
	return cmd
}
