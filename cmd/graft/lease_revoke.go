package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// revokePrefixView is lease revoke --prefix's -o json and -o yaml.
type revokePrefixView struct {
	Prefix  string      `json:"prefix"`
	Revoked int         `json:"revoked"`
	Failed  []leaseView `json:"failed"`
}

// revokeView is lease revoke's -o json and -o yaml for one lease.
type revokeView struct {
	Lease   leaseView `json:"lease"`
	Warning string    `json:"warning,omitempty"`
}

func (a *app) leaseRevokeCmd() *cobra.Command {
	var (
		prefix string
		force  bool
	)
	cmd := &cobra.Command{
		Use:   "revoke LEASE_ID [--force] | --prefix PATH",
		Short: "Drop a lease's database user now, or those of every lease of the roles at and below a path",
		Long: `Drop the database user of lease LEASE_ID, then the lease. Its holder, and who
may write its role, may revoke it.

--prefix PATH revokes every lease of the roles at and below PATH (needs
write on PATH): after deleting a role, or when its users must go now. It
says how many it revoked and lists those it could not, with why; it exits 1
if there are any.

--force (admins) forgets lease LEASE_ID even when its user cannot be
dropped (its database is gone, say). The user may then still exist: graft
says so, and no longer tracks it.`,
		Example: `  graft lease revoke k3qz7x2m4vdp6hy5n8wb9tc2ra
  graft lease revoke --prefix /dba/pp/creds/ro
  graft lease revoke k3qz7x2m4vdp6hy5n8wb9tc2ra --force   # forget it, its user undroppable`,
		Args: args(0, 1, "LEASE_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			byPrefix := cmd.Flags().Changed("prefix")
			switch {
			case len(args) == 1 && byPrefix:
				return errors.New("lease revoke: give a lease id or --prefix, not both")
			case len(args) == 0 && !byPrefix:
				return errors.New("lease revoke: missing LEASE_ID: give a lease id (see `graft lease ls`), or --prefix PATH to revoke every lease of the roles at and below PATH")
			case byPrefix && prefix == "":
				return errors.New("lease revoke: --prefix is empty: give the path of a role, or of a subtree of roles, such as /dba/pp/creds")
			case byPrefix && force:
				return errors.New("lease revoke: --force forgets one lease whose user cannot be dropped: give it a lease id, not --prefix")
			}
			if byPrefix {
				return a.revokePrefix(cmd, trimPrefix(prefix))
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				l, warning, err := c.RevokeLease(ctx, args[0], force)
				if err != nil {
					return err
				}
				return a.Emit(revokeView{Lease: viewLease(l), Warning: warning}, func(w io.Writer) error {
					verb := "revoked"
					if force {
						verb = "forgot"
					}
					if _, err := fmt.Fprintf(w, "%s lease %s: user %s of role %s, held by %s\n", verb, l.ID, printable(l.Username), printable(l.Role), printable(l.Principal)); err != nil {
						return err
					}
					if warning != "" {
						fmt.Fprintf(a.stderr, "graft: warning: %s\n", printable(warning))
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", "", "revoke every lease of the roles at and below this path, instead of one lease")
	cmd.Flags().BoolVar(&force, "force", false, "forget the lease even if its user cannot be dropped (admins; the user may still exist)")
	return cmd
}

// revokePrefix revokes every lease below prefix, and fails when any
// could not be.
func (a *app) revokePrefix(cmd *cobra.Command, prefix string) error {
	return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
		n, failed, err := c.RevokePrefix(ctx, prefix)
		if err != nil {
			return err
		}
		err = a.Emit(revokePrefixView{Prefix: prefix, Revoked: n, Failed: viewLeases(failed)}, func(w io.Writer) error {
			if _, err := fmt.Fprintf(w, "revoked %s of the roles at and below %s\n", plural(n, "lease", "leases"), prefix); err != nil {
				return err
			}
			if len(failed) == 0 {
				return nil
			}
			fmt.Fprintf(w, "not revoked:\n")
			tab := newTable(w, leaseHeader...)
			leaseTable(tab, failed)
			return tab.flush()
		})
		if err != nil {
			return err
		}
		if len(failed) > 0 {
			return fmt.Errorf("lease revoke --prefix %s: %s not revoked (their last errors above); revoke them again, or once their users are gone, `graft lease revoke ID --force`",
				prefix, plural(len(failed), "lease", "leases"))
		}
		return nil
	})
}
