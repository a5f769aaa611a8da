package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) dbcredRolePutCmd() *cobra.Command {
	var (
		role                                 sdk.DBCredRole
		creationSQL, revocationSQL, renewSQL []string
	)
	cmd := &cobra.Command{
		Use:   "put PATH --driver postgres|mysql --admin PATH --creation-sql SQL|@FILE",
		Short: "Write a dynamic-credential role: how to make and drop its users, and their leases' TTLs",
		Long: `Write the role at PATH, in its owner's tree. The admin connection string must
already be stored at ADMIN/dsn: graft put ADMIN/dsn 'postgres://admin:...@db:5432/postgres'
for postgres, or 'admin:...@tcp(db:3306)/?tls=true' for mysql (MariaDB 10.4
and later). The DSN stays in the owner's tree: a copy of the role names it,
and graftd issues through it, but nobody reads it through the copy.

--creation-sql gives the statements that create a user. graftd replaces
{{name}}, {{password}} and {{expiration}} (when the lease expires, UTC,
"2006-01-02 15:04:05+00") and runs them in order, on PostgreSQL in one
transaction. {{password}} becomes the password's hash, which the database
stores as it is: PostgreSQL's SCRAM verifier in PASSWORD '{{password}}',
MariaDB's native hash in IDENTIFIED BY PASSWORD '{{password}}'. @FILE
reads the statements from FILE, @- from standard input; one value is one
element, however many statements it holds. Repeat the flag for more.
--revocation-sql and --renew-sql replace the driver's defaults, which end
a user's sessions, hand what it owns to the admin and drop it, and move
its expiration.

Share the role into an application's replicated tree; the application
issues users from its copy and never sees the admin DSN:

  graft share /dba/pp/creds/ro --to /app/orders/replicated/creds/ro
  graft dbcred issue /app/orders/replicated/creds/ro      # as app:orders

Needs write on PATH and read on ADMIN/dsn.`,
		Example: `  # once, as the DBA: a group role that holds the grants
  psql -c 'CREATE ROLE readers NOLOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO readers'
  cat > create-ro.sql <<'EOF'
  CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE readers;
  EOF
  ` + dbcredExample + `
  graft dbcred role put /dba/billing/creds/rw --driver mysql --admin /dba/billing/admin \
      --creation-sql "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'" \
      --creation-sql "GRANT SELECT, INSERT ON billing.* TO '{{name}}'@'%'" \
      --default-ttl 15m --max-ttl 4h --max-leases-per-principal 10`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := trimPrefix(args[0])
			var (
				probs     []string
				stdinUsed bool
			)
			switch role.Driver {
			case "postgres", "mysql":
			case "":
				probs = append(probs, "missing --driver: postgres, or mysql for MariaDB")
			default:
				probs = append(probs, fmt.Sprintf("--driver %q: want postgres, or mysql for MariaDB", role.Driver))
			}
			if role.Admin == "" {
				probs = append(probs, "missing --admin: the path whose key dsn holds the admin connection, such as /dba/pp/admin/postgres")
			}
			if len(creationSQL) == 0 {
				probs = append(probs, "missing --creation-sql: the statements that create a user, with {{name}} and {{password}}, as SQL or @FILE")
			}
			for _, d := range []struct {
				flag string
				neg  bool
			}{
				{"--default-ttl", role.DefaultTTL < 0}, {"--max-ttl", role.MaxTTL < 0},
				{"--password-length", role.PasswordLength < 0},
				{"--max-leases", role.MaxLeases < 0}, {"--max-leases-per-principal", role.MaxLeasesPerPrincipal < 0},
			} {
				if d.neg {
					probs = append(probs, d.flag+" is negative: leave it out for the default, or give a positive value")
				}
			}
			for _, f := range []struct {
				flag string
				in   []string
				out  *[]string
			}{{"creation-sql", creationSQL, &role.CreationSQL}, {"revocation-sql", revocationSQL, &role.RevocationSQL}, {"renew-sql", renewSQL, &role.RenewSQL}} {
				stmts, err := a.statements(f.flag, f.in, &stdinUsed)
				if err != nil {
					probs = append(probs, err.Error())
				}
				*f.out = stmts
			}
			if len(probs) > 0 {
				return fmt.Errorf("dbcred role put %s: %s; for example: %s, create-ro.sql holding %s", path, strings.Join(probs, "; "),
					strings.Join(strings.Fields(strings.ReplaceAll(dbcredExample, "\\\n", "")), " "), creationSQLExample)
			}
			role.Admin = trimPrefix(role.Admin)
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				rev, err := c.PutRole(ctx, path, role)
				if err != nil {
					return err
				}
				return a.Emit(map[string]any{"path": path, "revision": rev}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "role %s revision %d; share it with `graft share %s --to /app/NAME/replicated/...`, and issue with `graft dbcred issue`\n", path, rev, path)
					return err
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&role.Driver, "driver", "", "the database: postgres, or mysql (MariaDB 10.4 and later)")
	f.StringVar(&role.Admin, "admin", "", "the path whose key dsn holds the admin connection (ADMIN/dsn), in the owner's tree")
	f.StringArrayVar(&creationSQL, "creation-sql", nil, "statements that create a user, with {{name}}, {{password}}, {{expiration}}; SQL, @FILE or @- (repeatable; required)")
	f.StringArrayVar(&revocationSQL, "revocation-sql", nil, "statements that drop a user ({{name}}); SQL, @FILE or @- (repeatable; default: the driver's)")
	f.StringArrayVar(&renewSQL, "renew-sql", nil, "statements that extend a user ({{name}}, {{expiration}}); SQL, @FILE or @- (repeatable; default: the driver's)")
	f.DurationVar(&role.DefaultTTL, "default-ttl", 0, "a lease's TTL when issue names none (default 1h)")
	f.DurationVar(&role.MaxTTL, "max-ttl", 0, "how long a lease may live with renewals (default 24h)")
	f.StringVar(&role.UsernameTemplate, "username-template", "", "user names from {{principal}}, {{role}}, {{random}} (required) and {{unix}} (default v-{{principal}}-{{role}}-{{random}}-{{unix}})")
	f.IntVar(&role.PasswordLength, "password-length", 0, "length of passwords (default 32)")
	f.StringVar(&role.PasswordAlphabet, "password-alphabet", "", "the characters of passwords (default A-Z a-z 0-9)")
	f.IntVar(&role.MaxLeases, "max-leases", 0, "at most this many live leases of the role (default 0: no limit)")
	f.IntVar(&role.MaxLeasesPerPrincipal, "max-leases-per-principal", 0, "at most this many live leases of the role per principal (default 0: no limit)")
	return cmd
}
