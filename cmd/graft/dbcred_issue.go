package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// issuedView is dbcred issue's -o json and -o yaml: the credential, shown
// this once, and its lease.
type issuedView struct {
	LeaseID       string `json:"lease_id"`
	LeaseDuration string `json:"lease_duration"`
	Renewable     bool   `json:"renewable"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	ExpireTime    string `json:"expire_time"`
	MaxExpireTime string `json:"max_expire_time,omitempty"`
}

func (a *app) dbcredIssueCmd() *cobra.Command {
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "issue PATH [--ttl DURATION]",
		Short: "Create a database user from a role, for a lease, and print its name and password, this once",
		Long: `Create a new database user from the role at PATH (an application issues from
its copy of the role, shared into its replicated tree) and print its lease
and credential. The password is printed only here: graftd keeps none.

The lease lasts --ttl (default: the role's default TTL; at most its max
TTL). Renew it before it expires with 'graft lease renew LEASE_ID'; when
it expires, graftd drops the user. 'graft lease revoke LEASE_ID' drops it
now. Needs issue on PATH.`,
		Example: `  graft dbcred issue /app/orders/replicated/creds/ro
  graft dbcred issue /app/orders/replicated/creds/ro --ttl 15m -o json`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl < 0 {
				return fmt.Errorf("dbcred issue: --ttl %s is negative: leave it out for the role's default, or give a duration such as 15m", ttl)
			}
			path := trimPrefix(args[0])
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				cred, err := c.Issue(ctx, path, ttl)
				if err != nil {
					return err
				}
				l := cred.Lease
				v := issuedView{LeaseID: l.ID, LeaseDuration: human(leaseDuration(l)), Renewable: l.Renewable, Username: cred.Username, Password: cred.Password,
					ExpireTime: jsonTime(l.ExpireTime), MaxExpireTime: jsonTime(l.MaxExpireTime)}
				return a.Emit(v, func(w io.Writer) error {
					tab := newTable(w, "KEY", "VALUE")
					tab.row("lease_id", v.LeaseID)
					tab.row("lease_duration", v.LeaseDuration)
					tab.row("renewable", fmt.Sprint(v.Renewable))
					tab.row("username", v.Username)
					tab.row("password", v.Password)
					if err := tab.flush(); err != nil {
						return err
					}
					_, err := fmt.Fprintf(a.stderr, "lease %s expires %s; renew it with `graft lease renew %s`, drop the user now with `graft lease revoke %s`; graft shows this password only once\n",
						l.ID, tableTime(l.ExpireTime), l.ID, l.ID)
					return err
				})
			})
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the lease lasts (default: the role's default TTL; at most its max TTL)")
	return cmd
}

// leaseDuration is how long a new lease lasts, to the second: from its
// issue to its expiry.
func leaseDuration(l sdk.Lease) time.Duration {
	if l.IssueTime.IsZero() || l.ExpireTime.IsZero() {
		return 0
	}
	return l.ExpireTime.Sub(l.IssueTime).Round(time.Second)
}
