package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// tokenInfoView is a token record as -o json and -o yaml show it.
type tokenInfoView struct {
	Accessor  string   `json:"accessor"`
	Principal string   `json:"principal"`
	Roles     []string `json:"roles"`
	Created   string   `json:"created,omitempty"`
	Creator   string   `json:"creator,omitempty"`
	Expires   string   `json:"expires,omitempty"`
}

// newTokenView is graft token create's -o json and -o yaml: the token,
// shown this once, and its record.
type newTokenView struct {
	Token string        `json:"token"`
	Info  tokenInfoView `json:"info"`
}

type identityView struct {
	Principal string   `json:"principal"`
	Roles     []string `json:"roles"`
	Method    string   `json:"method"`
	Accessor  string   `json:"accessor,omitempty"`
	Expires   string   `json:"expires,omitempty"`
}

func viewTokenInfo(t sdk.TokenInfo) tokenInfoView {
	return tokenInfoView{
		Accessor:  t.Accessor,
		Principal: t.Principal,
		Roles:     nonNil(t.Roles),
		Created:   jsonTime(t.Created),
		Creator:   t.Creator,
		Expires:   jsonTime(t.Expires),
	}
}

func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke access tokens; show who you are",
		Long: `A token stands for a principal ("<kind>:<name>", such as
app:message-processor or user:alice) holding roles; the roles' policies say
what it may do (see graft policy). graftd stores only a token's hash: the
token is printed once, by 'graft token create', and never again. A revoked
or expired token is refused by every graftd within a second.

Every subcommand but whoami needs the admin action.`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(a.tokenCreateCmd(), a.tokenListCmd(), a.tokenRevokeCmd(), a.tokenWhoAmICmd())
	return cmd
}

func (a *app) tokenCreateCmd() *cobra.Command {
	var (
		principal string
		roles     []string
		ttl       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --principal KIND:NAME --role ROLE [--role ROLE...] [--ttl DURATION]",
		Short: "Issue a token and print it, this once",
		Long: `Issue a token for a principal holding the given roles, each of which must
have a policy (graft policy ls). The token is printed alone on stdout, so
that it can be captured, and only this once; the accessor that names it in
'graft token ls' and 'graft token revoke' goes to stderr. -o json and
-o yaml print both. Without --ttl the token does not expire.`,
		Example: `  graft token create --principal app:message-processor --role app --ttl 720h
  graft token create --principal user:alice --role dba -o json`,
		Args: args(0, 0, "nothing (the principal goes in --principal)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if principal == "" {
				return errors.New("token create: give --principal, such as app:message-processor or user:alice")
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				token, info, err := c.CreateToken(ctx, principal, roles, ttl)
				if err != nil {
					return err
				}
				return a.Emit(newTokenView{Token: token, Info: viewTokenInfo(info)}, func(w io.Writer) error {
					if _, err := fmt.Fprintln(w, token); err != nil {
						return err
					}
					expiry := "never expires"
					if !info.Expires.IsZero() {
						expiry = "expires " + tableTime(info.Expires)
					}
					_, err := fmt.Fprintf(a.stderr, "accessor %s for %s (roles %s), %s; graft shows this token only once\n",
						info.Accessor, info.Principal, strings.Join(info.Roles, ", "), expiry)
					return err
				})
			})
		},
	}
	cmd.Flags().StringVar(&principal, "principal", "", "whom the token stands for, <kind>:<name>")
	cmd.Flags().StringSliceVar(&roles, "role", nil, "a role the token holds; repeat it or separate roles with commas")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the token lives, e.g. 720h (0: it does not expire)")
	return cmd
}

func (a *app) tokenListCmd() *cobra.Command {
	var principal string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List tokens (never the tokens themselves)",
		Long: `List the token records, sorted by principal then creation time: accessor,
principal, roles, creation and expiry times, and creator. The tokens
themselves are not stored and cannot be shown.`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				infos, err := c.ListTokens(ctx, principal)
				if err != nil {
					return err
				}
				views := make([]tokenInfoView, 0, len(infos))
				for _, t := range infos {
					views = append(views, viewTokenInfo(t))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(infos) == 0 {
						what := "no tokens"
						if principal != "" {
							what += " for " + principal
						}
						_, err := fmt.Fprintln(a.stderr, what)
						return err
					}
					tab := newTable(w, "ACCESSOR", "PRINCIPAL", "ROLES", "CREATED", "EXPIRES", "CREATOR")
					for _, t := range infos {
						tab.row(t.Accessor, t.Principal, strings.Join(t.Roles, ","), tableTime(t.Created), tableTime(t.Expires), t.Creator)
					}
					return tab.flush()
				})
			})
		},
	}
	cmd.Flags().StringVar(&principal, "principal", "", "only the tokens of this principal")
	return cmd
}

func (a *app) tokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke TOKEN|ACCESSOR|-",
		Short: "Revoke a token, named by itself or its accessor",
		Long: `Revoke a token, named by its accessor (see graft token ls) or by the token
itself; - reads it from stdin, which keeps a token out of the shell
history. Every graftd refuses the token within a second. The argument is
never printed: the result names the accessor and principal.`,
		Example: `  graft token revoke acc_3q2-7wEXAMPLE
  graft token revoke - < leaked-token.txt`,
		Args: args(1, 1, "TOKEN or ACCESSOR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg := args[0]
			if arg == "-" {
				line, err := bufio.NewReader(io.LimitReader(a.stdin, 4096)).ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("token revoke: read stdin: %w", err)
				}
				arg = strings.TrimSpace(line)
			}
			a.Secrets = append(a.Secrets, arg)
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				info, err := c.RevokeToken(ctx, arg)
				if err != nil {
					return err
				}
				return a.Emit(viewTokenInfo(info), func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "revoked %s (%s)\n", info.Accessor, info.Principal)
					return err
				})
			})
		},
	}
}

func (a *app) tokenWhoAmICmd() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show the principal and roles graftd sees for your token",
		Long: `Show who graftd takes you for: the principal, its effective roles (from
the token or certificate and from policies that name it), how it
authenticated (token, certificate or root), the token's accessor and when
it expires.`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				id, err := c.WhoAmI(ctx)
				if err != nil {
					return err
				}
				v := identityView{Principal: id.Principal, Roles: nonNil(id.Roles), Method: id.Method, Accessor: id.Accessor, Expires: jsonTime(id.Expires)}
				return a.Emit(v, func(w io.Writer) error {
					roles, accessor, expires := strings.Join(id.Roles, ", "), id.Accessor, "never"
					if roles == "" {
						roles = "-"
					}
					if accessor == "" {
						accessor = "-"
					}
					if !id.Expires.IsZero() {
						expires = tableTime(id.Expires)
					}
					_, err := fmt.Fprintf(w, "principal: %s\nroles: %s\nmethod: %s\naccessor: %s\nexpires: %s\n",
						id.Principal, roles, id.Method, accessor, expires)
					return err
				})
			})
		},
	}
}

// nonNil makes an empty list show as [] rather than null in -o json.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
