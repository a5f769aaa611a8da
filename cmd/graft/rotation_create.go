package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// cleanList drops blanks from a comma-separated flag's items.
func cleanList(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (a *app) rotationCreateCmd() *cobra.Command {
	var spec rotation.Spec
	cmd := &cobra.Command{
		Use:   "create NAME --driver postgres|mysql --admin PATH --target PATH --users A,B --consumers app:X[,app:Y]",
		Short: "Create a rotation: what to rotate, where to publish it, who uses it",
		Long: `Create the rotation NAME. The admin connection string must already be stored
at ADMIN/dsn: graft put ADMIN/dsn 'postgres://admin:...@db:5432/postgres'
for postgres, or 'admin:...@tcp(db:3306)/?tls=true' (go-sql-driver/mysql's
form) for mysql, which is MariaDB or MySQL. The DSN asks for TLS to the
database (sslmode=verify-full, tls=true) as any client's would. It stays
in the owner's tree and is never published. Each run publishes user and
password below TARGET, in one write; share TARGET to the consumers' trees
as with any other value.

The two --users alternate, and are created the first time if absent; they
act as --group, a role without login that holds the grants (default: the
users' common prefix, message-processor for message-processor-blue and
message-processor-green). The old user is retired only once every agent of
every --consumers application reports the new revision healthy.

Without --every the rotation runs only when asked (graft rotation run).
Needs the rotate action on TARGET and read on ADMIN/dsn.`,
		Example: "  " + rotationExample + "\n  graft rotation create billing-mysql --driver mysql --admin /dba/billing/admin --target /dba/billing/db \\\n      --users billing_a,billing_b --group billing --consumers app:billing,app:invoicer --every 24h",
		Args:    args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec.Name = args[0]
			spec.Users, spec.Consumers = cleanList(spec.Users), cleanList(spec.Consumers)
			var missing []string
			for _, f := range []struct {
				flag  string
				unset bool
			}{
				{"--driver", spec.Driver == ""},
				{"--admin", spec.Admin == ""},
				{"--target", spec.Target == ""},
				{"--users", len(spec.Users) == 0},
				{"--consumers", len(spec.Consumers) == 0},
			} {
				if f.unset {
					missing = append(missing, f.flag)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("rotation create %s: missing %s; for example: %s", spec.Name, strings.Join(missing, ", "),
					strings.Join(strings.Fields(strings.ReplaceAll(rotationExample, "\\\n", "")), " "))
			}
			spec.Admin, spec.Target = trimPrefix(spec.Admin), trimPrefix(spec.Target)
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, err := c.CreateRotation(ctx, spec)
				if err != nil {
					return err
				}
				return a.Emit(viewRotation(r), func(w io.Writer) error {
					var b strings.Builder
					writeSpec(&b, r.Spec)
					fmt.Fprintf(&b, "created; run it with `graft rotation run %s`, or let --every do it, once a graft-agent with rotations: in its configuration runs\n", r.Spec.Name)
					_, err := io.WriteString(w, b.String())
					return err
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Driver, "driver", "", "the database: postgres, or mysql (MariaDB 10.4 and later)")
	f.StringVar(&spec.Admin, "admin", "", "the path whose key dsn holds the admin connection (ADMIN/dsn)")
	f.StringVar(&spec.Target, "target", "", "the path below which each run publishes user and password")
	f.StringSliceVar(&spec.Users, "users", nil, "the two database users that alternate, comma separated")
	f.StringVar(&spec.Group, "group", "", "the role both users act as, holding the grants (default: the users' common prefix)")
	f.StringSliceVar(&spec.Consumers, "consumers", nil, "the applications using the credential, as app:NAME, comma separated or repeated")
	f.DurationVar(&spec.RolloutTimeout, "rollout-timeout", rotation.DefaultRolloutTimeout, "how long the consumers have to run the new credential, healthy, before the run rolls back")
	f.DurationVar(&spec.RetireGrace, "retire-grace", rotation.DefaultRetireGrace, "how long the old user keeps working after the rollout")
	f.DurationVar(&spec.Every, "every", 0, "run every this long (at least 1m; default: only when asked)")
	f.DurationVar(&spec.StepTimeout, "step-timeout", rotation.DefaultStepTimeout, "how long any other step may take")
	f.IntVar(&spec.PasswordLength, "password-length", 0, "length of new passwords (default 32)")
	f.StringVar(&spec.PasswordAlphabet, "password-alphabet", "", "the characters of new passwords (default A-Z a-z 0-9)")
	return cmd
}
