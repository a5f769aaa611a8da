package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// leaseListView is lease ls's -o json and -o yaml.
type leaseListView struct {
	Leases []leaseView `json:"leases"`
	// ReaperPaused: expired leases keep their users until the reaper
	// resumes.
	ReaperPaused bool `json:"reaper_paused"`
}

// reaperPausedNote is what lease ls and reaper pause say of a paused
// reaper.
const reaperPausedNote = "the reaper is paused: expired leases keep their database users until `graft lease reaper resume`"

func (a *app) leaseListCmd() *cobra.Command {
	var prefix, principal string
	cmd := &cobra.Command{
		Use:     "ls [--prefix PATH] [--principal KIND:NAME]",
		Aliases: []string{"list"},
		Short:   "List the leases you hold and those of roles you may write; never a password",
		Long: `List the leases you hold and those of the roles you may write, by role and
id: each one's database user, state, expiry, whether a renewal would extend
it, and its failed revocations with the last error. A lease is pending
while its user is being made, active, revoking while it is being dropped,
and irrevocable when revocation failed too often: revoke it again, or,
once its user is gone, 'graft lease revoke ID --force' (admins). It also
says when the reaper, which drops the users of expired leases, is paused.`,
		Example: `  graft lease ls
  graft lease ls --prefix /dba/pp/creds --principal app:orders -o json`,
		Args: args(0, 0, "nothing (the prefix goes in --prefix)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				leases, paused, err := c.ListLeases(ctx, trimPrefix(prefix), principal)
				if err != nil {
					return err
				}
				return a.Emit(leaseListView{Leases: viewLeases(leases), ReaperPaused: paused}, func(w io.Writer) error {
					if len(leases) == 0 {
						fmt.Fprintln(a.stderr, "no leases")
					} else {
						tab := newTable(w, leaseHeader...)
						leaseTable(tab, leases)
						if err := tab.flush(); err != nil {
							return err
						}
					}
					if paused {
						fmt.Fprintln(a.stderr, reaperPausedNote)
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", "", "only leases of the roles at or below this path")
	cmd.Flags().StringVar(&principal, "principal", "", "only leases held by this principal, such as app:orders")
	return cmd
}
