package agent_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/pgtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// dbcredRig is graftd, a DBA and the application orders, whose tree has
// a role's copy at replicated/creds/ro when a database is given.
type dbcredRig struct {
	g        *graftdtest.Graftd
	dba, app *sdk.Client
	appFile  string
	dir      string
}

func newDBCredRig(t *testing.T, pg *pgtest.Server) *dbcredRig {
	t.Helper()
	ctx := t.Context()
	g := graftdtest.Start(t)
	_, dbaToken := g.TokenFile(t, "user:dora", "dba")
	appFile, appToken := g.TokenFile(t, "app:orders", "app")
	r := &dbcredRig{g: g, appFile: appFile, dir: t.TempDir()}
	var err error
	if r.dba, err = sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: dbaToken}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.dba.Close() })
	if r.app, err = sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: appToken}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.app.Close() })
	if pg == nil {
		return r
	}
	if _, err := r.dba.Put(ctx, "/dba/pp/admin/pg/dsn", []byte(pg.URL(pg.Superuser, pg.SuperuserPassword, "postgres"))); err != nil {
		t.Fatal(err)
	}
	role := sdk.DBCredRole{Driver: "postgres", Admin: "/dba/pp/admin/pg", DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour,
		CreationSQL: []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}}
	if _, err := r.dba.PutRole(ctx, "/dba/pp/creds/ro", role); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.dba.Share(ctx, "/dba/pp/creds/ro", []string{"/app/orders/replicated/creds/ro"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	return r
}

// config renders text into dir/creds.env.
func (r *dbcredRig) config(text string) agent.Config {
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App, cfg.ID, cfg.Listen = r.g.Addr, r.appFile, "orders", "orders-1", "off"
	cfg.Templates = []agent.Template{{Destination: filepath.Join(r.dir, "creds.env"), Contents: text}}
	return cfg
}

// once runs the agent with --once (or --dry-run) and returns its error
// and log.
func (r *dbcredRig) once(t *testing.T, cfg agent.Config, dryRun bool) (error, string) {
	t.Helper()
	cfg.Once, cfg.DryRun = !dryRun, dryRun
	logs := &testenv.Buffer{}
	var out strings.Builder
	a, err := agent.New(t.Context(), cfg, slogTo(logs), &out)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(t.Context())
	return err, logs.String() + out.String()
}

func (r *dbcredRig) leases(t *testing.T) []sdk.Lease {
	t.Helper()
	ls, _, err := r.dba.ListLeases(t.Context(), "/dba/pp/creds", "")
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

const credTemplate = `{{ with dbcred "replicated/creds/ro" }}user={{ .Username }} password={{ .Password }} lease={{ .LeaseID }}{{ end }}`

// A template's dbcred issues once: --once runs reuse the lease in the
// state file (0600, beside the rendered file) instead of issuing new
// users; a lease revoked meanwhile is replaced by a new one; --dry-run
// never issues.
func TestDBCredOnceKeepsItsLease(t *testing.T) {
	pg := pgtest.Start(t)
	r := newDBCredRig(t, pg)
	cfg := r.config(credTemplate)
	dest := cfg.Templates[0].Destination
	stateFile := filepath.Join(r.dir, ".graft-dbcred-orders-1.json")

	// --dry-run with nothing held issues nothing.
	if err, out := r.once(t, cfg, true); err != nil || !strings.Contains(out, "write  "+dest) {
		t.Fatalf("--dry-run: %v\n%s", err, out)
	}
	if ls := r.leases(t); len(ls) != 0 {
		t.Fatalf("--dry-run issued %d leases", len(ls))
	}

	if err, out := r.once(t, cfg, false); err != nil {
		t.Fatalf("--once: %v\n%s", err, out)
	}
	first := read(t, dest)
	ls := r.leases(t)
	if len(ls) != 1 || !strings.Contains(first, "user="+ls[0].Username+" ") || !strings.Contains(first, "lease="+ls[0].ID) {
		t.Fatalf("after --once: leases %+v, file %q", ls, first)
	}
	st, err := os.Stat(stateFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the state file: %v (want it 0600)", err)
	}
	var state struct {
		Kind        string            `json:"kind"`
		Credentials []json.RawMessage `json:"credentials"`
	}
	data, _ := os.ReadFile(stateFile)
	if err := json.Unmarshal(data, &state); err != nil || state.Kind != "graft.agent.dbcred/v1" || len(state.Credentials) != 1 {
		t.Fatalf("the state file: %v %+v", err, state)
	}

	// Again: the same user, and the lease renewed rather than a new one.
	if err, out := r.once(t, cfg, false); err != nil {
		t.Fatalf("--once again: %v\n%s", err, out)
	}
	if got := read(t, dest); got != first {
		t.Fatalf("the second --once rendered another credential")
	}
	if again := r.leases(t); len(again) != 1 || !again[0].ExpireTime.After(ls[0].ExpireTime) {
		t.Fatalf("after the second --once: %+v; want the one lease, renewed past %s", again, ls[0].ExpireTime)
	}
	// --dry-run shows what it holds, issues nothing.
	if err, out := r.once(t, cfg, true); err != nil || !strings.Contains(out, "same   "+dest) {
		t.Fatalf("--dry-run with a lease held: %v\n%s", err, out)
	}

	// Revoked by the DBA: the next run issues a new user.
	if _, _, err := r.dba.RevokeLease(t.Context(), ls[0].ID, false); err != nil {
		t.Fatal(err)
	}
	err, out := r.once(t, cfg, false)
	if err != nil || !strings.Contains(out, "lease is gone; issuing a new one") {
		t.Fatalf("--once after the revocation: %v\n%s", err, out)
	}
	second := r.leases(t)
	if len(second) != 1 || second[0].ID == ls[0].ID || !strings.Contains(read(t, dest), "user="+second[0].Username+" ") {
		t.Fatalf("after the revocation: leases %+v", second)
	}
	if strings.Contains(out, "password=") || strings.Contains(out, pwOf(read(t, dest))) {
		t.Fatalf("the agent's log holds the password:\n%s", out)
	}
}

// pwOf is the password in a rendered credTemplate.
func pwOf(rendered string) string {
	_, after, _ := strings.Cut(rendered, "password=")
	pw, _, _ := strings.Cut(after, " ")
	return pw
}

// What a template can get wrong with dbcred fails its render with an
// error that says what to do, and issues nothing: no role at the path,
// a value that is not a role, a path outside the tree, a computed path
// (withheld from the error).
func TestDBCredTemplateErrors(t *testing.T) {
	r := newDBCredRig(t, nil)
	ctx := t.Context()
	if _, err := r.dba.Put(ctx, "/dba/pp/plain/password", []byte("s3cret-value")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.dba.Share(ctx, "/dba/pp/plain", []string{"/app/orders/replicated/plain"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, text, want string }{
		{"no role", `{{ (dbcred "replicated/creds/none").Username }}`, "dbcred /app/orders/replicated/creds/none: no role there: a DBA shares one with graft share <role> --to /app/orders/replicated/creds/none"},
		{"not a role", `{{ (dbcred "replicated/plain/password").Username }}`, "is not a role written by graft dbcred role put"},
		{"outside", `{{ (dbcred "/dba/pp/creds/ro").Username }}`, "/dba/pp/creds/ro is outside the agent's tree /app/orders"},
		{"computed", `{{ (dbcred (secret "replicated/plain/password")).Username }}`, "a key whose name the template computed does not exist (the name is withheld"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err, out := r.once(t, r.config(c.text), false)
			if !errors.Is(err, agent.ErrTemplates) || !strings.Contains(out, c.want) {
				t.Fatalf("err %v, want ErrTemplates and a log saying %q:\n%s", err, c.want, out)
			}
			if strings.Contains(out, "s3cret-value") {
				t.Fatalf("the log holds a value:\n%s", out)
			}
		})
	}
	ls, _, err := r.dba.ListLeases(ctx, "", "")
	if err != nil || len(ls) != 0 {
		t.Fatalf("leases after failed renders: %v %+v", err, ls)
	}
}

// A state file that is not the agent's (damaged, or another program's)
// is set aside with a log line that quotes none of it, and the agent
// issues anew.
func TestDBCredDamagedStateFile(t *testing.T) {
	pg := pgtest.Start(t)
	r := newDBCredRig(t, pg)
	cfg := r.config(credTemplate)
	stateFile := filepath.Join(r.dir, ".graft-dbcred-orders-1.json")
	if err := os.WriteFile(stateFile, []byte(`{"kind": "something-else", "password": "leaked-if-quoted"`), 0o600); err != nil {
		t.Fatal(err)
	}
	err, out := r.once(t, cfg, false)
	if err != nil || !strings.Contains(out, "state file cannot be read") || strings.Contains(out, "leaked-if-quoted") {
		t.Fatalf("--once with a damaged state file: %v\n%s", err, out)
	}
	if ls := r.leases(t); len(ls) != 1 {
		t.Fatalf("leases: %+v", ls)
	}
}
