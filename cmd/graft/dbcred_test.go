package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
)

const (
	dbAdmin = "/dba/pp/admin/postgres"
	dbRole  = "/dba/pp/creds/ro"
	dbCopy  = "/app/orders/replicated/creds/ro"
	// dbAdminDSN is what the admin DSN holds in the tests without a
	// database; no output may show it.
	dbAdminDSN = "postgres://admin:adm1n-s3cret@127.0.0.1:1/postgres?sslmode=disable"
)

// createRoSQL is a creation file of two statements: one element of
// creation_sql.
const createRoSQL = `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";
`

// offline is a cli whose graftd does not exist: a command that reaches
// for it fails with "cannot reach graftd", so an error that names the
// bad flag was found before any call.
func offline(t *testing.T) *cli {
	return &cli{t: t, env: map[string]string{"GRAFT_ADDR": "127.0.0.1:1", "GRAFT_TOKEN": "graft_offline"}}
}

// Bad flags are refused before graftd is asked, each with what to give
// instead; a missing role put flag is named with an example to copy.
func TestDBCredFlagErrors(t *testing.T) {
	c := offline(t)
	empty := writeFile(t, "\n  \n")
	example := "for example: graft dbcred role put /dba/pp/creds/ro --driver postgres --admin /dba/pp/admin/postgres --creation-sql @create-ro.sql, create-ro.sql holding CREATE ROLE \"{{name}}\""
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"dbcred", "role", "put", dbRole},
			[]string{"graft: dbcred role put /dba/pp/creds/ro: missing --driver: postgres, or mysql for MariaDB; missing --admin: the path whose key dsn holds the admin connection",
				"missing --creation-sql: the statements that create a user, with {{name}} and {{password}}, as SQL or @FILE; " + example}},
		{[]string{"dbcred", "role", "put", dbRole, "--driver", "oracle", "--admin", dbAdmin, "--creation-sql", "x"},
			[]string{`--driver "oracle": want postgres, or mysql for MariaDB; for example`}},
		{[]string{"dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", "@/nonexistent/create.sql"},
			[]string{"--creation-sql @/nonexistent/create.sql: open /nonexistent/create.sql: no such file or directory (@FILE reads the statements from FILE)"}},
		{[]string{"dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", "@" + empty},
			[]string{"--creation-sql @" + empty + ": empty; it should hold the statements"}},
		{[]string{"dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", "@"},
			[]string{"--creation-sql @: name the file after @, as in --creation-sql @create.sql, or @- to read standard input"}},
		{[]string{"dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", " "},
			[]string{"--creation-sql is empty: give the statements, or @FILE to read them from a file"}},
		{[]string{"dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", "@-", "--revocation-sql", "@-"},
			[]string{"--revocation-sql @-: standard input is read once; give the other statements as @FILE"}},
		{[]string{"dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", "x", "--max-ttl", "-1h", "--max-leases", "-2"},
			[]string{"--max-ttl is negative: leave it out for the default, or give a positive value; --max-leases is negative"}},
		{[]string{"dbcred", "role", "put", dbRole, "--default-ttl", "soon"},
			[]string{`graft: invalid argument "soon" for "--default-ttl" flag: time: invalid duration "soon" (see 'graft dbcred role put --help')`}},
		{[]string{"dbcred", "role", "put"},
			[]string{"graft: dbcred role put: missing PATH (usage: graft dbcred role put PATH --driver postgres|mysql --admin PATH --creation-sql SQL|@FILE [flags])"}},
		{[]string{"dbcred", "role", "get"}, []string{"graft: dbcred role get: missing PATH (usage: graft dbcred role get PATH [flags])"}},
		{[]string{"dbcred", "role", "rm"}, []string{"graft: dbcred role rm: missing PATH"}},
		{[]string{"dbcred", "issue"}, []string{"graft: dbcred issue: missing PATH"}},
		{[]string{"dbcred", "issue", dbCopy, "--ttl", "-5m"},
			[]string{"graft: dbcred issue: --ttl -5m0s is negative: leave it out for the role's default, or give a duration such as 15m"}},
		{[]string{"lease", "revoke"},
			[]string{"graft: lease revoke: missing LEASE_ID: give a lease id (see `graft lease ls`), or --prefix PATH to revoke every lease of the roles at and below PATH"}},
		{[]string{"lease", "revoke", "abc", "--prefix", "/dba/pp"}, []string{"graft: lease revoke: give a lease id or --prefix, not both"}},
		{[]string{"lease", "revoke", "--prefix", "/dba/pp", "--force"},
			[]string{"graft: lease revoke: --force forgets one lease whose user cannot be dropped: give it a lease id, not --prefix"}},
		{[]string{"lease", "revoke", "--prefix", ""}, []string{"graft: lease revoke: --prefix is empty: give the path of a role"}},
		{[]string{"lease", "revoke", "a", "b"}, []string{"graft: lease revoke: 2 arguments given, at most 1 accepted"}},
		{[]string{"lease", "renew"}, []string{"graft: lease renew: missing LEASE_ID (see `graft lease ls`)"}},
		{[]string{"lease", "renew", "abc", "--increment", "-1m"},
			[]string{"graft: lease renew: --increment -1m0s is negative: leave it out for the role's default TTL, or give a duration such as 30m"}},
		{[]string{"lease", "ls", "/dba"}, []string{"graft: lease ls: 1 arguments given, at most 0 accepted"}},
		{[]string{"lease", "reaper", "stop"}, []string{`graft: lease reaper: unknown subcommand "stop": want pause, resume (see 'graft lease reaper --help')`}},
		{[]string{"dbcred", "role", "show"}, []string{`graft: dbcred role: unknown subcommand "show": want get, ls, put, rm (see 'graft dbcred role --help')`}},
		{[]string{"lease", "extend"}, []string{`graft: lease: unknown subcommand "extend": want ls, reaper, renew, revoke`}},
	}
	for _, tt := range tests {
		got := c.fails(tt.args...)
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("graft %s:\n got %q\nwant it to contain %q", strings.Join(tt.args, " "), got, w)
			}
		}
	}
}

// Roles through the CLI, without a database: the admin DSN comes first;
// a file of several statements is one element; graftd's validation is
// reported whole; a shared copy names its source; the role is listed,
// shown as text and JSON, and deleted. Leases: none yet, the reaper
// paused and resumed, revoke --prefix of nothing, and unknown ids
// refused.
func TestDBCredRoles(t *testing.T) {
	g := graftdtest.Start(t)
	c := newCLI(t, g)
	file := filepath.Join(t.TempDir(), "create-ro.sql")
	if err := os.WriteFile(file, []byte(createRoSQL), 0o600); err != nil {
		t.Fatal(err)
	}
	put := []string{"dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", "@" + file}

	mustContain(t, "role put before its admin DSN", c.fails(put...), "the admin DSN "+dbAdmin+"/dsn", "put it first", "graft put "+dbAdmin+"/dsn")
	c.put(dbAdmin+"/dsn", dbAdminDSN)

	got := c.fails("dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", "CREATE ROLE x",
		"--default-ttl", "2h", "--max-ttl", "1h", "--username-template", "v-{{principal}}")
	mustContain(t, "role put of an invalid role", got, "{{name}} and {{password}}", "max_ttl 1h0m0s is shorter than default_ttl 2h0m0s", "{{random}}")

	out := c.ok(append(put, "--creation-sql", `GRANT USAGE ON SCHEMA public TO "{{name}}"`, "--max-leases-per-principal", "3")...)
	if !regexp.MustCompile(`^role /dba/pp/creds/ro revision \d+; share it with .graft share /dba/pp/creds/ro --to /app/NAME/replicated/...., and issue with .graft dbcred issue.\n$`).MatchString(out) {
		t.Errorf("role put printed %q", out)
	}

	var v roleView
	decode(t, c.ok("dbcred", "role", "get", dbRole, "-o", "json"), &v)
	wantSQL := []string{strings.TrimSpace(createRoSQL), `GRANT USAGE ON SCHEMA public TO "{{name}}"`}
	if strings.Join(v.CreationSQL, "|") != strings.Join(wantSQL, "|") || v.Path != dbRole || v.Source != "" || v.Revision == 0 ||
		v.Driver != "postgres" || v.Admin != dbAdmin || v.DefaultTTL != "1h" || v.MaxTTL != "24h" || v.MaxLeasesPerPrincipal != 3 {
		t.Errorf("role get -o json = %+v; want the file as one statement, then the flag's, and graftd's default TTLs", v)
	}
	text := c.ok("dbcred", "role", "get", dbRole)
	mustContain(t, "role get", text,
		"role:              /dba/pp/creds/ro\n",
		"driver:            postgres\n",
		"admin:             /dba/pp/admin/postgres/dsn\n",
		"ttl:               1h by default, at most 24h with renewals\n",
		"username template: v-{{principal}}-{{role}}-{{random}}-{{unix}} (default)\n",
		"passwords:         32 characters of A-Z a-z 0-9\n",
		"max leases:        no limit, 3 per principal\n",
		"creation sql:\n  - CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';\n    GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";\n  - GRANT USAGE",
		"revocation sql:    the driver's default")

	// Shared into the application's tree, the copy names its source.
	rule := shareID(t, c, dbRole, "--to", dbCopy)
	var cp roleView
	decode(t, c.ok("dbcred", "role", "get", dbCopy, "-o", "json"), &cp)
	if cp.Source != dbRole || cp.Path != dbCopy || len(cp.CreationSQL) != 2 {
		t.Errorf("role get of the copy = %+v, want source %s", cp, dbRole)
	}
	mustContain(t, "role get of the copy", c.ok("dbcred", "role", "get", dbCopy), "source:            /dba/pp/creds/ro (this is a copy)\n")

	assertTable(t, c.ok("dbcred", "role", "ls"), [][]string{
		{"PATH", "DRIVER", "ADMIN", "DEFAULT-TTL", "MAX-TTL", "SOURCE"},
		{dbCopy, "postgres", dbAdmin, "1h", "24h", dbRole},
		{dbRole, "postgres", dbAdmin, "1h", "24h", "-"},
	})
	if r := c.run("dbcred", "role", "ls", "/dba/none"); r.code != 0 || r.stdout != "" || r.stderr != "no roles at or below /dba/none\n" {
		t.Errorf("role ls of an empty prefix: %+v", r)
	}
	var views []roleView
	decode(t, c.ok("dbcred", "role", "ls", "/dba/", "-o", "json"), &views)
	if len(views) != 1 || views[0].Path != dbRole {
		t.Errorf("role ls /dba/ -o json = %+v", views)
	}
	// A value that is not a role is not one to get.
	c.put("/dba/pp/plain", "v")
	mustContain(t, "role get of a plain value", c.fails("dbcred", "role", "get", "/dba/pp/plain"), "not a role written by `graft dbcred role put`")

	// Leases: none yet; the reaper paused, said so, resumed.
	if r := c.run("lease", "ls"); r.code != 0 || r.stdout != "" || r.stderr != "no leases\n" {
		t.Errorf("lease ls with none: %+v", r)
	}
	var ll leaseListView
	decode(t, c.ok("lease", "ls", "-o", "json"), &ll)
	if ll.Leases == nil || len(ll.Leases) != 0 || ll.ReaperPaused {
		t.Errorf("lease ls -o json with none = %+v, want leases [] and the reaper running", ll)
	}
	if out := c.ok("lease", "reaper", "pause"); out != reaperPausedNote+"\n" {
		t.Errorf("reaper pause printed %q", out)
	}
	if r := c.run("lease", "ls"); r.code != 0 || r.stderr != "no leases\n"+reaperPausedNote+"\n" {
		t.Errorf("lease ls with the reaper paused: %+v", r)
	}
	decode(t, c.ok("lease", "ls", "-o", "json"), &ll)
	if !ll.ReaperPaused {
		t.Errorf("lease ls -o json with the reaper paused = %+v", ll)
	}
	if out := c.ok("lease", "reaper", "resume", "-o", "json"); !strings.Contains(out, `"reaper_paused": false`) {
		t.Errorf("reaper resume -o json printed %q", out)
	}
	// An application may not pause it.
	_, appToken := g.TokenFile(t, "app:orders", "app")
	mustContain(t, "reaper pause as an application", c.as(appToken).fails("lease", "reaper", "pause"), "permission denied")

	if out := c.ok("lease", "revoke", "--prefix", "/dba/pp/creds/"); out != "revoked 0 leases of the roles at and below /dba/pp/creds\n" {
		t.Errorf("revoke --prefix of no lease printed %q", out)
	}
	for _, args := range [][]string{{"lease", "renew", "nosuchlease"}, {"lease", "revoke", "nosuchlease"}} {
		mustContain(t, strings.Join(args, " "), c.fails(args...), "not found")
	}

	// A shared role is deleted once unshared, as any value.
	mustContain(t, "role rm of a shared role", c.fails("dbcred", "role", "rm", dbRole), "it is replicated to "+dbCopy)
	c.ok("unshare", rule)
	out = c.ok("dbcred", "role", "rm", dbRole)
	mustContain(t, "role rm", out, "deleted role /dba/pp/creds/ro at revision ", "graft lease revoke --prefix /dba/pp/creds/ro")
	mustContain(t, "role get after rm", c.fails("dbcred", "role", "get", dbRole), "not found")
}

// login connects to PostgreSQL as user and counts the rows of orders.
func login(t *testing.T, pg *pgtest.Server, user, password string) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL(user, password, "postgres"))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n)
	return n, err
}

// The tour of dynamic credentials on a real PostgreSQL: the DBA stores
// the admin DSN and a role and shares the role; the application issues
// from its copy with its own token and logs in with what it got; lease ls
// shows the leases, never a password; renew moves the expiry; revoke
// drops the user, so its login fails; revoke --prefix drops the rest.
func TestDBCredPostgres(t *testing.T) {
	pg := pgtest.Start(t)
	pg.Exec(t, "postgres", "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
	g := graftdtest.Start(t)
	dba := newCLI(t, g)
	file := filepath.Join(t.TempDir(), "create-ro.sql")
	if err := os.WriteFile(file, []byte(createRoSQL), 0o600); err != nil {
		t.Fatal(err)
	}
	dba.put(dbAdmin+"/dsn", pg.DSN)
	dba.ok("dbcred", "role", "put", dbRole, "--driver", "postgres", "--admin", dbAdmin, "--creation-sql", "@"+file, "--default-ttl", "10m", "--max-ttl", "1h")
	dba.ok("share", dbRole, "--to", dbCopy)
	_, token := g.TokenFile(t, "app:orders", "app")
	app := dba.as(token)

	// Issued as JSON: the keys a script reads.
	var first issuedView
	decode(t, app.ok("dbcred", "issue", dbCopy, "-o", "json"), &first)
	if first.LeaseID == "" || first.LeaseDuration != "10m" || !first.Renewable || !strings.HasPrefix(first.Username, "v-orders-ro-") || len(first.Password) != 32 {
		t.Fatalf("dbcred issue -o json = %+v", first)
	}
	if n, err := login(t, pg, first.Username, first.Password); err != nil || n != 2 {
		t.Fatalf("log in as the issued user: %d rows, %v", n, err)
	}
	// Issued as a table, with a note on stderr saying what comes next.
	r := app.run("dbcred", "issue", dbCopy, "--ttl", "5m")
	if r.code != 0 {
		t.Fatalf("dbcred issue: %+v", r)
	}
	fields := map[string]string{}
	for l := range strings.Lines(r.stdout) {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), " "); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	second := issuedView{LeaseID: fields["lease_id"], LeaseDuration: fields["lease_duration"], Username: fields["username"], Password: fields["password"]}
	if fields["KEY"] != "VALUE" || second.LeaseDuration != "5m" || fields["renewable"] != "true" || len(second.Password) != 32 || second.LeaseID == first.LeaseID {
		t.Fatalf("dbcred issue printed:\n%s", r.stdout)
	}
	mustContain(t, "dbcred issue's note", r.stderr, "lease "+second.LeaseID+" expires ", "graft lease renew "+second.LeaseID, "graft shows this password only once")
	if strings.Contains(r.stderr, second.Password) {
		t.Errorf("dbcred issue repeated the password on stderr: %q", r.stderr)
	}
	if _, err := login(t, pg, second.Username, second.Password); err != nil {
		t.Fatalf("log in as the second user: %v", err)
	}

	// lease ls: the application's two leases, by itself and by the DBA,
	// and never a password.
	noPassword := func(what, out string) {
		t.Helper()
		for _, pw := range []string{first.Password, second.Password} {
			if strings.Contains(out, pw) {
				t.Errorf("%s shows a password:\n%s", what, out)
			}
		}
	}
	ls := app.ok("lease", "ls")
	noPassword("lease ls", ls)
	rows := strings.Split(strings.TrimSpace(ls), "\n")
	if len(rows) != 3 || !regexp.MustCompile(`^ID +ROLE +PRINCIPAL +HOLDER +USERNAME +STATE +EXPIRES +RENEWABLE +ATTEMPTS +LAST-ERROR$`).MatchString(rows[0]) {
		t.Fatalf("lease ls:\n%s", ls)
	}
	for _, iv := range []issuedView{first, second} {
		if !regexp.MustCompile(`(?m)^` + iv.LeaseID + ` +/dba/pp/creds/ro +app:orders +- +` + iv.Username + ` +active +\S+ +yes +0 +-$`).MatchString(ls) {
			t.Errorf("lease ls has no row for %s (%s):\n%s", iv.LeaseID, iv.Username, ls)
		}
	}
	var ll leaseListView
	out := dba.ok("lease", "ls", "--prefix", "/dba/pp/creds", "--principal", "app:orders", "-o", "json")
	noPassword("lease ls -o json", out)
	decode(t, out, &ll)
	if len(ll.Leases) != 2 || ll.ReaperPaused {
		t.Fatalf("lease ls -o json as the DBA = %+v", ll)
	}
	for _, l := range ll.Leases {
		if l.Role != dbRole || l.IssuedAt != dbCopy || l.Principal != "app:orders" || l.State != "active" || l.ExpireTime == "" || l.MaxExpireTime == "" {
			t.Errorf("lease ls -o json: %+v", l)
		}
	}
	if r := dba.run("lease", "ls", "--principal", "app:billing"); r.code != 0 || r.stderr != "no leases\n" {
		t.Errorf("lease ls of another principal: %+v", r)
	}

	// Renew: 30m from now, within the role's hour.
	before := time.Now()
	out = app.ok("lease", "renew", second.LeaseID, "--increment", "30m")
	mustContain(t, "lease renew", out, "renewed lease "+second.LeaseID+" (user "+second.Username+"): expires ", "; it ends for good at ")
	var renewed leaseView
	decode(t, app.ok("lease", "renew", second.LeaseID, "--increment", "30m", "-o", "json"), &renewed)
	expires, err := time.Parse(time.RFC3339Nano, renewed.ExpireTime)
	if err != nil || expires.Before(before.Add(29*time.Minute)) || expires.After(time.Now().Add(31*time.Minute)) {
		t.Errorf("lease renew --increment 30m: expires %s (%v), want 30m from now", renewed.ExpireTime, err)
	}
	// Past the max TTL it stops at the max, and says so.
	decode(t, app.ok("lease", "renew", second.LeaseID, "--increment", "5h", "-o", "json"), &renewed)
	if renewed.ExpireTime != renewed.MaxExpireTime || renewed.Renewable {
		t.Errorf("lease renew past the max TTL = %+v, want it to expire at its max and be renewable no more", renewed)
	}
	mustContain(t, "lease renew at the max", app.ok("lease", "renew", second.LeaseID, "--increment", "2h"), "it has reached its role's max TTL")

	// Revoke by id: the user is dropped, its login refused.
	out = app.ok("lease", "revoke", first.LeaseID)
	if want := "revoked lease " + first.LeaseID + ": user " + first.Username + " of role /dba/pp/creds/ro, held by app:orders\n"; out != want {
		t.Errorf("lease revoke printed %q, want %q", out, want)
	}
	if _, err := login(t, pg, first.Username, first.Password); err == nil {
		t.Error("the revoked user still logs in")
	}
	mustContain(t, "lease revoke twice", app.fails("lease", "revoke", first.LeaseID), "not found")
	// Revoke by prefix, as the role's owner: the rest go.
	if out := dba.ok("lease", "revoke", "--prefix", dbRole); out != "revoked 1 lease of the roles at and below /dba/pp/creds/ro\n" {
		t.Errorf("lease revoke --prefix printed %q", out)
	}
	if _, err := login(t, pg, second.Username, second.Password); err == nil {
		t.Error("a user revoked by prefix still logs in")
	}
	if r := app.run("lease", "ls"); r.code != 0 || r.stdout != "" || r.stderr != "no leases\n" {
		t.Errorf("lease ls after revoking everything: %+v", r)
	}
}
