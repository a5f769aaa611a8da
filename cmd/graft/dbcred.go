package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// dbcredExample is the one example every dbcred role message refers to.
const dbcredExample = `graft dbcred role put /dba/pp/creds/ro --driver postgres --admin /dba/pp/admin/postgres \
      --creation-sql @create-ro.sql`

// creationSQLExample is a PostgreSQL creation statement to copy: a member
// of a group role that holds the grants (direct grants fill a table's
// catalog row after some 2,400 users).
const creationSQLExample = `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE readers;`

func (a *app) dbcredCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dbcred",
		Short: "Dynamic database credentials: a new database user for each request, valid for a lease",
		Long: `A dynamic-credential role says how graftd makes and drops database users:
the statements, the admin connection (ADMIN/dsn, in the owner's tree) and
the leases' TTLs. It is a value in its owner's tree; share it into an
application's replicated tree, and the application issues users from its
copy without ever reading the admin DSN. Each user lives for a lease, which
its holder renews and revokes (graft lease); when a lease expires graftd
drops the user.`,
	}
	role := &cobra.Command{
		Use:   "role",
		Short: "Write, show, list and delete dynamic-credential roles",
	}
	role.AddCommand(a.dbcredRolePutCmd(), a.dbcredRoleGetCmd(), a.dbcredRoleListCmd(), a.dbcredRoleRmCmd())
	cmd.AddCommand(subcommandsOnly(role), a.dbcredIssueCmd())
	return subcommandsOnly(cmd)
}

// subcommandsOnly makes a command group refuse a word that names none
// of its subcommands (cobra would print the help and exit 0, and a typo
// in a script would pass) and show the help without one.
func subcommandsOnly(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		var names []string
		for _, sub := range cmd.Commands() {
			if sub.IsAvailableCommand() {
				names = append(names, sub.Name())
			}
		}
		return fmt.Errorf("%s: unknown subcommand %q: want %s (see '%s --help')",
			strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" "), printable(args[0]), strings.Join(names, ", "), cmd.CommandPath())
	}
	return cmd
}

// roleView is a role as -o json and -o yaml show it.
type roleView struct {
	Path string `json:"path"`
	// Source is where the role was written, when path is a copy.
	Source                string   `json:"source,omitempty"`
	Revision              int64    `json:"revision,omitempty"`
	Driver                string   `json:"driver"`
	Admin                 string   `json:"admin"`
	CreationSQL           []string `json:"creation_sql"`
	RevocationSQL         []string `json:"revocation_sql,omitempty"`
	RenewSQL              []string `json:"renew_sql,omitempty"`
	DefaultTTL            string   `json:"default_ttl"`
	MaxTTL                string   `json:"max_ttl"`
	UsernameTemplate      string   `json:"username_template,omitempty"`
	PasswordLength        int      `json:"password_length,omitempty"`
	PasswordAlphabet      string   `json:"password_alphabet,omitempty"`
	MaxLeases             int      `json:"max_leases,omitempty"`
	MaxLeasesPerPrincipal int      `json:"max_leases_per_principal,omitempty"`
}

func viewRole(r sdk.RoleInfo) roleView {
	s := r.Role
	return roleView{
		Path: r.Path, Source: r.Source, Revision: r.Revision,
		Driver: s.Driver, Admin: s.Admin, CreationSQL: nonNil(s.CreationSQL), RevocationSQL: s.RevocationSQL, RenewSQL: s.RenewSQL,
		DefaultTTL: human(s.DefaultTTL), MaxTTL: human(s.MaxTTL),
		UsernameTemplate: s.UsernameTemplate, PasswordLength: s.PasswordLength, PasswordAlphabet: s.PasswordAlphabet,
		MaxLeases: s.MaxLeases, MaxLeasesPerPrincipal: s.MaxLeasesPerPrincipal,
	}
}

// writeRole writes a role as role get shows it. The statements are the
// owner's text: shown escaped, one line each, never interpreted by the
// terminal.
func writeRole(b *strings.Builder, r sdk.RoleInfo) {
	s := r.Role
	fmt.Fprintf(b, "role:              %s\n", printable(r.Path))
	if r.Source != "" {
		fmt.Fprintf(b, "source:            %s (this is a copy)\n", printable(r.Source))
	}
	if r.Revision != 0 {
		fmt.Fprintf(b, "revision:          %d\n", r.Revision)
	}
	fmt.Fprintf(b, "driver:            %s\n", printable(s.Driver))
	if s.Admin != "" {
		fmt.Fprintf(b, "admin:             %s/dsn\n", printable(s.Admin))
	}
	fmt.Fprintf(b, "ttl:               %s by default, at most %s with renewals\n", orDefault(s.DefaultTTL, "1h"), orDefault(s.MaxTTL, "24h"))
	tmpl := s.UsernameTemplate
	if tmpl == "" {
		tmpl = "v-{{principal}}-{{role}}-{{random}}-{{unix}} (default)"
	}
	fmt.Fprintf(b, "username template: %s\n", printable(tmpl))
	length, alphabet := "32", "A-Z a-z 0-9"
	if s.PasswordLength > 0 {
		length = fmt.Sprint(s.PasswordLength)
	}
	if s.PasswordAlphabet != "" {
		alphabet = fmt.Sprintf("%q", s.PasswordAlphabet)
	}
	fmt.Fprintf(b, "passwords:         %s characters of %s\n", length, alphabet)
	fmt.Fprintf(b, "max leases:        %s, %s per principal\n", limit(s.MaxLeases), limit(s.MaxLeasesPerPrincipal))
	writeStatements(b, "creation sql:", s.CreationSQL, "none")
	writeStatements(b, "revocation sql:", s.RevocationSQL, "the driver's default (ends its sessions, hands what it owns to the admin, drops it)")
	writeStatements(b, "renew sql:", s.RenewSQL, "the driver's default (moves its expiration)")
}

func writeStatements(b *strings.Builder, label string, stmts []string, none string) {
	if len(stmts) == 0 {
		fmt.Fprintf(b, "%-19s%s\n", label, none)
		return
	}
	fmt.Fprintln(b, label)
	for _, s := range stmts {
		// A file of several statements is one element: show its lines.
		for i, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
			mark := "  - "
			if i > 0 {
				mark = "    "
			}
			fmt.Fprintf(b, "%s%s\n", mark, printable(l))
		}
	}
}

// orDefault is a duration, or the default graftd takes for 0.
func orDefault(d time.Duration, def string) string {
	if d == 0 {
		return def + " (default)"
	}
	return human(d)
}

func limit(n int) string {
	if n == 0 {
		return "no limit"
	}
	return fmt.Sprint(n)
}

// statements returns the values of a repeatable SQL flag, each one
// element however many statements it holds; @FILE reads FILE and @-
// standard input, once.
func (a *app) statements(flag string, values []string, stdinUsed *bool) ([]string, error) {
	var out []string
	for _, v := range values {
		name, ok := strings.CutPrefix(v, "@")
		if !ok {
			if strings.TrimSpace(v) == "" {
				return nil, fmt.Errorf("--%s is empty: give the statements, or @FILE to read them from a file", flag)
			}
			out = append(out, v)
			continue
		}
		var (
			data []byte
			err  error
		)
		switch name {
		case "":
			return nil, fmt.Errorf("--%s @: name the file after @, as in --%s @create.sql, or @- to read standard input", flag, flag)
		case "-":
			if *stdinUsed {
				return nil, fmt.Errorf("--%s @-: standard input is read once; give the other statements as @FILE", flag)
			}
			*stdinUsed = true
			data, err = readBounded(a.stdin)
		default:
			data, err = readFileBounded(name)
		}
		if err != nil {
			return nil, fmt.Errorf("--%s %s: %w (@FILE reads the statements from FILE)", flag, v, err)
		}
		text := strings.TrimSpace(string(data))
		if text == "" {
			return nil, fmt.Errorf("--%s %s: empty; it should hold the statements", flag, v)
		}
		out = append(out, text)
	}
	return out, nil
}

// statementLimit bounds what @FILE reads: graftd takes 16 KiB a
// statement and reports more itself; this only stops an endless stream.
const statementLimit = 1 << 20

func readFileBounded(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readBounded(f)
}

func readBounded(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, statementLimit+1))
	if err != nil {
		return nil, err
	}
	if len(data) > statementLimit {
		return nil, fmt.Errorf("more than %d MiB; a role's statements are far smaller", statementLimit>>20)
	}
	return data, nil
}
