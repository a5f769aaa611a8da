package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) leaseCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "lease",
		Aliases: []string{"leases"},
		Short:   "List, renew and revoke the leases of dynamic database credentials",
		Long: `Each user 'graft dbcred issue' creates lives for a lease. Its holder (the
principal that issued it) may renew and revoke it; who may write its role
may list and revoke its leases. When a lease expires, graftd's reaper drops
its user; 'graft lease reaper pause' holds that (admins). No command here
ever shows a password.`,
	}
	reaper := &cobra.Command{
		Use:   "reaper",
		Short: "Pause or resume the revocation of expired leases, on every graftd (admins)",
		Long: `The reaper drops the users of expired leases. Pause it while, say, a restored
copy of the store points at a live database whose users it must not drop;
'graft lease ls' says when it is paused.`,
	}
	reaper.AddCommand(a.leaseReaperCmd(true), a.leaseReaperCmd(false))
	cmd.AddCommand(a.leaseListCmd(), a.leaseRenewCmd(), a.leaseRevokeCmd(), subcommandsOnly(reaper))
	return subcommandsOnly(cmd)
}

// leaseView is a lease as -o json and -o yaml show it; never a password.
type leaseView struct {
	ID             string `json:"id"`
	Role           string `json:"role"`
	IssuedAt       string `json:"issued_at"`
	Principal      string `json:"principal"`
	Username       string `json:"username"`
	State          string `json:"state"`
	IssueTime      string `json:"issue_time"`
	ExpireTime     string `json:"expire_time"`
	MaxExpireTime  string `json:"max_expire_time"`
	Renewable      bool   `json:"renewable"`
	RevokeAttempts int    `json:"revoke_attempts"`
	LastError      string `json:"last_error,omitempty"`
	Holder         string `json:"holder,omitempty"`
}

func viewLease(l sdk.Lease) leaseView {
	return leaseView{
		ID: l.ID, Role: l.Role, IssuedAt: l.IssuedAt, Principal: l.Principal, Username: l.Username, State: l.State,
		IssueTime: jsonTime(l.IssueTime), ExpireTime: jsonTime(l.ExpireTime), MaxExpireTime: jsonTime(l.MaxExpireTime),
		Renewable: l.Renewable, RevokeAttempts: l.RevokeAttempts, LastError: l.LastError, Holder: l.Holder,
	}
}

func viewLeases(ls []sdk.Lease) []leaseView {
	out := make([]leaseView, 0, len(ls))
	for _, l := range ls {
		out = append(out, viewLease(l))
	}
	return out
}

// leaseTable writes leases as lease ls shows them.
func leaseTable(t *table, ls []sdk.Lease) {
	for _, l := range ls {
		state := l.State
		if l.State == sdk.LeaseIrrevocable {
			state += " (revoke it again, or --force once its user is gone)"
		}
		t.row(l.ID, l.Role, l.Principal, dash(l.Holder), l.Username, state, tableTime(l.ExpireTime), yesNo(l.Renewable), fmt.Sprint(l.RevokeAttempts), dash(l.LastError))
	}
}

var leaseHeader = []string{"ID", "ROLE", "PRINCIPAL", "HOLDER", "USERNAME", "STATE", "EXPIRES", "RENEWABLE", "ATTEMPTS", "LAST-ERROR"}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
