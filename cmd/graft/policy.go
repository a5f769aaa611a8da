package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// maxPolicy bounds what policy put reads; a policy is a few hundred bytes.
const maxPolicy = 1 << 20

// exitDenied is graft policy check's exit status for a denial, apart from
// 1, which means the question could not be answered.
const exitDenied = 3

// policyView is a policy as -o json and -o yaml show it.
type policyView struct {
	Role    string `json:"role"`
	YAML    string `json:"yaml"`
	Author  string `json:"author,omitempty"`
	Updated string `json:"updated,omitempty"`
}

type policyDeletedView struct {
	Role string `json:"role"`
}

type policyInitView struct {
	Installed []string `json:"installed"`
	Kept      []string `json:"kept"`
	// Differing are the kept roles whose policy is not today's default.
	Differing []string `json:"differing"`
}

type decisionView struct {
	Allowed        bool     `json:"allowed"`
	Role           string   `json:"role,omitempty"`
	Rule           string   `json:"rule,omitempty"`
	Reason         string   `json:"reason"`
	EffectiveRoles []string `json:"effective_roles"`
}

func viewPolicy(p sdk.Policy) policyView {
	return policyView{Role: p.Role, YAML: string(p.YAML), Author: p.Author, Updated: jsonTime(p.Updated)}
}

func (a *app) policyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Manage the access policies: what each role may do where",
		Long: `Each role has one policy, a small YAML document of rules that allow or
deny actions (read, list, write, delete, share, admin) on path patterns:
/dba/** is a subtree, /app/+/config one segment, and /app/{name}/** the
caller's own tree. Deny wins; no match means deny. graftd validates a
policy when it is written, and a change applies on every replica within a
second. 'graft policy init' installs the defaults: admin, dba and app.

Writing, deleting and initialising policies needs the admin action.`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(a.policyPutCmd(), a.policyGetCmd(), a.policyListCmd(), a.policyRemoveCmd(), a.policyInitCmd(), a.policyCheckCmd())
	return cmd
}

func (a *app) policyPutCmd() *cobra.Command {
	var (
		file  string
		force bool
	)
	cmd := &cobra.Command{
		Use:   "put FILE",
		Short: "Create or replace a role's policy from a YAML file",
		Long: `Write the policy in FILE (- reads stdin; --file FILE works too). Its role:
field names the role. A document graftd cannot accept (an unknown action, a
bad pattern) is refused with the line at fault, and nothing changes.`,
		Example: `  graft policy get app > app.yaml && $EDITOR app.yaml && graft policy put app.yaml
  graft policy put - < ci.yaml`,
		Args: args(0, 1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch fileSet := cmd.Flags().Changed("file"); {
			case len(args) == 1 && fileSet:
				return errors.New("policy put: give the file as an argument or with --file, not both")
			case len(args) == 1:
				file = args[0]
			case !fileSet:
				return errors.New("policy put: no policy: give FILE, or - to read stdin")
			}
			doc, err := a.readPolicy(file)
			if err != nil {
				return err
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				var opts []sdk.WriteOption
				if force {
					opts = append(opts, sdk.Force())
				}
				p, err := c.PutPolicy(ctx, doc, opts...)
				if err != nil {
					return err
				}
				return a.Emit(viewPolicy(p), func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "policy %s written\n", p.Role)
					return err
				})
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "read the policy from this file; - reads stdin")
	cmd.Flags().BoolVar(&force, "force", false, "store it even if it takes admin on / away from the last policy that grants it")
	return cmd
}

// readPolicy reads a policy document from file, or stdin for "-".
func (a *app) readPolicy(file string) ([]byte, error) {
	if file == "" {
		return nil, errors.New("policy put: --file needs a file name, or - to read stdin")
	}
	var r io.Reader = a.stdin
	name := "stdin"
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("policy put: %w", err)
		}
		defer f.Close()
		r, name = f, file
	}
	doc, err := io.ReadAll(io.LimitReader(r, maxPolicy+1))
	if err != nil {
		return nil, fmt.Errorf("policy put: read %s: %w", name, err)
	}
	if len(doc) > maxPolicy {
		return nil, fmt.Errorf("policy put: %s holds more than %d MiB; is it a policy?", name, maxPolicy>>20)
	}
	return doc, nil
}

func (a *app) policyGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get ROLE",
		Short: "Print a role's policy",
		Long: `Print ROLE's policy exactly as stored, so that 'graft policy get ROLE >
file' can be edited and put back. -o json and -o yaml add its author and
update time.`,
		Args: args(1, 1, "ROLE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				p, err := c.GetPolicy(ctx, args[0])
				if err != nil {
					return err
				}
				return a.Emit(viewPolicy(p), func(w io.Writer) error {
					if _, err := w.Write(p.YAML); err != nil {
						return err
					}
					if a.isTerminal(w) && !bytes.HasSuffix(p.YAML, []byte("\n")) {
						_, err := io.WriteString(w, "\n")
						return err
					}
					return nil
				})
			})
		},
	}
}

func (a *app) policyListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the policies",
		Args:    args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				pols, err := c.ListPolicies(ctx)
				if err != nil {
					return err
				}
				views := make([]policyView, 0, len(pols))
				for _, p := range pols {
					views = append(views, viewPolicy(p))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(pols) == 0 {
						_, err := fmt.Fprintln(a.stderr, "no policies: everything but root is denied; install the defaults with graft policy init")
						return err
					}
					tab := newTable(w, "ROLE", "AUTHOR", "UPDATED")
					for _, p := range pols {
						tab.row(p.Role, p.Author, tableTime(p.Updated))
					}
					return tab.flush()
				})
			})
		},
	}
}

func (a *app) policyRemoveCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm ROLE",
		Short: "Delete a role's policy",
		Long: `Delete ROLE's policy. Tokens holding the role keep it, but it grants
nothing until a policy for it is put again. The last policy that grants
admin on / is kept unless --force is given: without it nobody but root could
manage tokens and policies.`,
		Args: args(1, 1, "ROLE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				var opts []sdk.WriteOption
				if force {
					opts = append(opts, sdk.Force())
				}
				if err := c.DeletePolicy(ctx, args[0], opts...); err != nil {
					return err
				}
				return a.Emit(policyDeletedView{Role: args[0]}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "policy %s deleted\n", args[0])
					return err
				})
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete it even if it is the last policy that grants admin on /")
	return cmd
}

func (a *app) policyInitCmd() *cobra.Command {
	var overwrite bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install the default policies (admin, dba, app)",
		Long: `Install the default policies: admin (everything), dba (read, list, write,
delete, share and rotate /dba/**) and app (read, list and report /app/{name}/**,
write it outside replicated destinations). Roles that already have a policy are
kept unless --overwrite is given, so running it again changes nothing; it
names the kept ones whose policy differs from today's default (edited, or
installed by an older graftd: dba gained rotate with rotations, app gained
report when agent reports began to need a grant).`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				init, err := c.InitPolicies(ctx, overwrite)
				if err != nil {
					return err
				}
				view := policyInitView{Installed: nonNil(init.Installed), Kept: nonNil(init.Kept), Differing: nonNil(init.Differing)}
				return a.Emit(view, func(w io.Writer) error {
					if _, err := fmt.Fprintf(w, "installed: %s\nkept: %s\n", listOrNone(init.Installed), listOrNone(init.Kept)); err != nil {
						return err
					}
					for _, role := range init.Differing {
						if _, err := fmt.Fprintf(w, "%s differs from the default policy (edited, or installed by an older graftd): `graft policy get %s` shows it; `graft policy init --overwrite` replaces every default role's\n", role, role); err != nil {
							return err
						}
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().BoolVar(&overwrite, "overwrite", false, "replace existing policies of the default roles")
	return cmd
}

func (a *app) policyCheckCmd() *cobra.Command {
	var (
		principal, action, path string
		roles                   []string
		exitCodeOnDeny, zero    bool
	)
	cmd := &cobra.Command{
		Use:   "check --principal KIND:NAME [--role ROLE...] --action ACTION --path PATH",
		Short: "Explain whether a principal may do an action on a path",
		Long: `Ask graftd whether PRINCIPAL, holding the roles policies bind to it plus
any given with --role (as a token would grant), may do ACTION (read, list,
write, delete, share, admin, rotate, issue, report) on PATH. Prints allowed or
denied, the reason, and the rule that decided.

The exit status says the answer, for scripts (as kubectl auth can-i's
does): 0 allowed, 3 denied, and 1 when the question could not be answered
(a bad action or path, graftd unreachable, no admin right). --exit-zero
exits 0 for a denial too.`,
		Example: `  graft policy check --principal app:message-processor --role app --action read --path /dba/orders/postgres/password
  graft policy check --principal user:alice --role dba --action write --path /dba/orders/x && echo may`,
		Args: args(0, 0, "nothing (use --principal, --action and --path)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var missing []string
			for _, f := range []struct{ name, value string }{{"--principal", principal}, {"--action", action}, {"--path", path}} {
				if f.value == "" {
					missing = append(missing, f.name)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("policy check: give %s", strings.Join(missing, ", "))
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				d, err := c.CheckPolicy(ctx, principal, roles, action, path)
				if err != nil {
					return err
				}
				v := decisionView{Allowed: d.Allowed, Role: d.Role, Rule: d.Rule, Reason: d.Reason, EffectiveRoles: nonNil(d.EffectiveRoles)}
				err = a.Emit(v, func(w io.Writer) error {
					verdict, rule := "denied", "none matched"
					if d.Allowed {
						verdict = "allowed"
					}
					if d.Rule != "" {
						rule = d.Rule
						if d.Role != "" {
							rule += " (role " + d.Role + ")"
						}
					}
					_, err := fmt.Fprintf(w, "%s\nreason: %s\nrule: %s\nroles: %s\n", verdict, d.Reason, rule, listOrNone(d.EffectiveRoles))
					return err
				})
				if err == nil && !zero && !d.Allowed {
					return exitCode(exitDenied)
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&principal, "principal", "", "the principal, <kind>:<name>")
	cmd.Flags().StringSliceVar(&roles, "role", nil, "a role to assume the principal holds; repeat it or separate roles with commas")
	cmd.Flags().StringVar(&action, "action", "", "read, list, write, delete, share, admin, rotate, issue or report")
	cmd.Flags().StringVar(&path, "path", "", "the path to check")
	cmd.Flags().BoolVar(&zero, "exit-zero", false, "exit 0 when the answer is denied (the default is 3)")
	// --exit-code asked for what is now the default; it stays accepted.
	cmd.Flags().BoolVar(&exitCodeOnDeny, "exit-code", true, "exit 3 when the answer is denied (the default)")
	cmd.Flags().MarkHidden("exit-code")
	return cmd
}

// listOrNone joins a list for a table line, "none" when empty.
func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
