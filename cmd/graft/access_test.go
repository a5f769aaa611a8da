package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// as returns a cli like c but authenticating with token.
func (c *cli) as(token string) *cli {
	env := make(map[string]string, len(c.env))
	for k, v := range c.env {
		env[k] = v
	}
	env["GRAFT_TOKEN"] = token
	return &cli{t: c.t, env: env}
}

var createdNote = regexp.MustCompile(`^accessor (acc_\S+) for (\S+) \(roles ([^)]*)\), (expires \S+|never expires); graft shows this token only once\n$`)

// createToken runs graft token create in table mode and returns the token
// (stdout, alone on its line) and the accessor (from the note on stderr).
func (c *cli) createToken(args ...string) (token, accessor string) {
	c.t.Helper()
	r := c.run(append([]string{"token", "create"}, args...)...)
	if r.code != 0 {
		c.t.Fatalf("token create %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	token = strings.TrimSuffix(r.stdout, "\n")
	if !strings.HasPrefix(token, "graft_") || strings.ContainsAny(token, " \n") {
		c.t.Fatalf("token create printed %q, want the token alone on its line", r.stdout)
	}
	m := createdNote.FindStringSubmatch(r.stderr)
	if m == nil {
		c.t.Fatalf("token create: stderr %q, want the accessor note", r.stderr)
	}
	if strings.Contains(r.stderr, token) {
		c.t.Fatalf("token create repeated the token on stderr: %q", r.stderr)
	}
	return token, m[1]
}

func TestTokenConfinesAnApplication(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	admin.put("/dba/orders/postgres/password", "dba-secret")
	admin.put("/app/other/config/x", "other")
	admin.put("/app/message-processor-evil/config/x", "evil")

	token, accessor := admin.createToken("--principal", "app:message-processor", "--role", "app", "--ttl", "720h")
	app := admin.as(token)

	rev := app.put("/app/message-processor/config/x", "mp-value")
	if got := app.ok("get", "/app/message-processor/config/x"); got != "mp-value" {
		t.Fatalf("app get of its own path = %q", got)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "/dba/orders/postgres/password"}, "graft: permission denied: app:message-processor may not read /dba/orders/postgres/password\n"},
		{[]string{"get", "/app/other/config/x"}, "graft: permission denied: app:message-processor may not read /app/other/config/x\n"},
		{[]string{"get", "/app/message-processor-evil/config/x"}, "graft: permission denied: app:message-processor may not read /app/message-processor-evil/config/x\n"},
		{[]string{"put", "/dba/orders/postgres/password", "mine"}, "graft: permission denied: app:message-processor may not write /dba/orders/postgres/password\n"},
		{[]string{"token", "ls"}, "graft: permission denied: app:message-processor may not admin /\n"},
	} {
		if got := app.fails(tt.args...); got != tt.want {
			t.Errorf("app: graft %s:\n got %q\nwant %q", strings.Join(tt.args, " "), got, tt.want)
		}
	}

	// Listing never names what the caller may not list.
	assertTable(t, app.ok("ls", "/"), [][]string{{"PATH", "REVISION", "AUTHOR", "UPDATED"}, {"/app/"}})
	var items []struct {
		Path     string `json:"path"`
		Revision int64  `json:"revision"`
	}
	decode(t, app.ok("ls", "/", "-r", "-o", "json"), &items)
	if len(items) != 1 || items[0].Path != "/app/message-processor/config/x" || items[0].Revision != rev {
		t.Fatalf("app ls / -r -o json = %+v, want only its own /app/message-processor/config/x", items)
	}

	who := app.ok("token", "whoami")
	want := regexp.MustCompile(`^principal: app:message-processor\nroles: app\nmethod: token\naccessor: ` + regexp.QuoteMeta(accessor) + `\nexpires: (\S+)\n$`)
	m := want.FindStringSubmatch(who)
	if m == nil {
		t.Fatalf("token whoami =\n%s", who)
	}
	expires, err := time.Parse(time.RFC3339, m[1])
	if err != nil || time.Until(expires) < 719*time.Hour || time.Until(expires) > 721*time.Hour {
		t.Fatalf("token whoami expires %q, want about 720h from now (%v)", m[1], err)
	}
	var id identityView
	decode(t, app.ok("token", "whoami", "-o", "json"), &id)
	if id.Principal != "app:message-processor" || strings.Join(id.Roles, ",") != "app" || id.Method != "token" || id.Accessor != accessor {
		t.Fatalf("token whoami -o json = %+v", id)
	}
	if got := admin.ok("token", "whoami"); !strings.HasPrefix(got, "principal: root\n") || !strings.Contains(got, "\nmethod: root\n") {
		t.Fatalf("root's token whoami =\n%s", got)
	}
}

func TestTokenListAndRevoke(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	token, accessor := admin.createToken("--principal", "app:message-processor", "--role", "app")
	app := admin.as(token)
	app.put("/app/message-processor/config/x", "v")

	// The token itself is never listed, in any format.
	out := admin.ok("token", "ls", "--principal", "app:message-processor")
	assertTable(t, out, [][]string{
		{"ACCESSOR", "PRINCIPAL", "ROLES", "CREATED", "EXPIRES", "CREATOR"},
		{accessor, "app:message-processor", "app", "*", "-", "root"},
	})
	for _, o := range []string{"table", "json", "yaml"} {
		if out := admin.ok("token", "ls", "-o", o); strings.Contains(out, token) || !strings.Contains(out, accessor) {
			t.Fatalf("token ls -o %s shows the token or lacks the accessor:\n%s", o, out)
		}
	}
	var infos []tokenInfoView
	decode(t, admin.ok("token", "ls", "--principal", "app:message-processor", "-o", "json"), &infos)
	if len(infos) != 1 || infos[0].Accessor != accessor || infos[0].Creator != "root" || infos[0].Expires != "" || strings.Join(infos[0].Roles, ",") != "app" {
		t.Fatalf("token ls -o json = %+v", infos)
	}
	if r := admin.run("token", "ls", "--principal", "app:nobody"); r.code != 0 || r.stdout != "" || r.stderr != "no tokens for app:nobody\n" {
		t.Fatalf("token ls of a principal without tokens = %+v", r)
	}

	// Revoked by accessor: refused within a second, without a restart.
	if got := admin.ok("token", "revoke", accessor); got != "revoked "+accessor+" (app:message-processor)\n" {
		t.Fatalf("token revoke by accessor printed %q", got)
	}
	refused(t, app)

	// Revoked by the token itself: the token appears nowhere.
	token2, accessor2 := admin.createToken("--principal", "app:message-processor", "--role", "app", "-o", "table")
	r := admin.run("token", "revoke", token2)
	if r.code != 0 || r.stdout != "revoked "+accessor2+" (app:message-processor)\n" || r.stderr != "" {
		t.Fatalf("token revoke by token = %+v", r)
	}
	refused(t, admin.as(token2))
	got := admin.fails("token", "revoke", token2)
	if !strings.HasPrefix(got, "graft: token revoke: ") || !strings.Contains(got, "not found") || strings.Contains(got, token2) {
		t.Fatalf("second revoke by token = %q; want not found, without the token", got)
	}
	if got := admin.fails("token", "revoke", token2, "extra"); strings.Contains(got, token2) {
		t.Fatalf("revoke with too many arguments echoed the token: %q", got)
	}

	// - reads the token from stdin, out of the shell history.
	token3, accessor3 := admin.createToken("--principal", "user:alice", "--role", "dba", "--role", "app")
	r = admin.runIn(token3+"\n", "token", "revoke", "-", "-o", "json")
	var revoked tokenInfoView
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, token3) {
		t.Fatalf("token revoke - = %+v", r)
	}
	decode(t, r.stdout, &revoked)
	if revoked.Accessor != accessor3 || revoked.Principal != "user:alice" || strings.Join(revoked.Roles, ",") != "app,dba" {
		t.Fatalf("token revoke - -o json = %+v", revoked)
	}
}

// refused checks that graftd refuses c's token as unauthenticated: the
// graftd that revoked it does so as soon as the revocation returns.
func refused(t *testing.T, c *cli) {
	t.Helper()
	r := c.run("get", "/app/message-processor/config/x")
	if r.code != 1 || !strings.HasSuffix(r.stderr, "; check GRAFT_TOKEN\n") {
		t.Fatalf("token still works right after revocation: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, c.env["GRAFT_TOKEN"]) {
		t.Fatalf("refusal shows the token: %q", r.stderr)
	}
}

func TestTokenCreate(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)

	var created newTokenView
	decode(t, admin.ok("token", "create", "--principal", "app:billing", "--role", "app", "--ttl", "1h", "-o", "json"), &created)
	if !strings.HasPrefix(created.Token, "graft_") || !strings.HasPrefix(created.Info.Accessor, "acc_") ||
		created.Info.Principal != "app:billing" || created.Info.Creator != "root" || created.Info.Expires == "" || created.Info.Created == "" {
		t.Fatalf("token create -o json = %+v", created)
	}
	y := admin.ok("token", "create", "--principal", "app:billing", "--role", "app", "-o", "yaml")
	if !regexp.MustCompile(`(?m)^token: graft_\S+$`).MatchString(y) || !strings.Contains(y, "principal: app:billing\n") {
		t.Fatalf("token create -o yaml =\n%s", y)
	}
	if who := admin.as(created.Token).ok("token", "whoami"); !strings.HasPrefix(who, "principal: app:billing\n") {
		t.Fatalf("whoami with a token from -o json =\n%s", who)
	}
	_, _ = admin.createToken("--principal", "user:bob", "--role", "dba,app")

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "create", "--principal", "app:x", "--role", "nosuch"}, `graft: token create app:x: role "nosuch" has no policy; create it with ` + "`graft policy put`" + ` or pick one from ` + "`graft policy ls`\n"},
		{[]string{"token", "create", "--role", "app"}, "graft: token create: give --principal, such as app:message-processor or user:alice\n"},
		{[]string{"token", "create", "--principal", "app:x"}, "graft: token create app:x: give at least one --role (see `graft policy ls`)\n"},
		{[]string{"token", "create", "--principal", "message-processor", "--role", "app"}, "graft: token create: principal \"message-processor\": want <kind>:<name>, such as app:message-processor or user:alice\n"},
		{[]string{"token", "create", "--principal", "app:x", "--role", "app", "--ttl", "-1h"}, "graft: token create app:x: --ttl must be a positive duration such as 720h\n"},
	} {
		if got := admin.fails(tt.args...); got != tt.want {
			t.Errorf("graft %s:\n got %q\nwant %q", strings.Join(tt.args, " "), got, tt.want)
		}
	}
}

func TestPolicyPutGetListRemove(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)

	assertTable(t, admin.ok("policy", "ls"), [][]string{
		{"ROLE", "AUTHOR", "UPDATED"},
		{"admin", "*", "*"},
		{"app", "*", "*"},
		{"dba", "*", "*"},
	})
	if got := admin.ok("policy", "get", "dba"); !strings.HasPrefix(got, "role: dba\n") || !strings.Contains(got, "/dba/**") {
		t.Fatalf("policy get dba =\n%s", got)
	}

	bad := "role: ci\nrules:\n  - allow: [read, fly]\n    paths: [/ci/**]\n"
	got := admin.fails("policy", "put", writeFile(t, bad))
	if !strings.HasPrefix(got, "graft: policy put: ") || !strings.Contains(got, "line 3") || !strings.Contains(got, `"fly"`) {
		t.Fatalf("policy put with an unknown action = %q; want the line and the action named", got)
	}
	if got := admin.fails("policy", "get", "ci"); !strings.Contains(got, "not found") {
		t.Fatalf("a refused policy was stored: policy get ci = %q", got)
	}
	// Every problem is reported, each with its line, on one line.
	got = admin.fails("policy", "put", writeFile(t, bad+"  - deny: [write]\n"))
	if !regexp.MustCompile(`^graft: policy put: line 3: unknown action "fly"[^\n]*; line 5: [^\n]+\n$`).MatchString(got) {
		t.Fatalf("policy put with two problems = %q; want both lines, separated by ;", got)
	}

	// Comments and layout survive: get prints what was put.
	doc := "# CI reads the build settings.\nrole: ci\nrules:\n  - allow: [read, list]\n    paths: [/ci/**]\n"
	if got := admin.ok("policy", "put", writeFile(t, doc)); got != "policy ci written\n" {
		t.Fatalf("policy put printed %q", got)
	}
	if got := admin.ok("policy", "get", "ci"); got != doc {
		t.Fatalf("policy get ci = %q, want exactly %q", got, doc)
	}
	doc2 := strings.Replace(doc, "[read, list]", "[read]", 1)
	if r := admin.runIn(doc2, "policy", "put", "-"); r.code != 0 || r.stdout != "policy ci written\n" {
		t.Fatalf("policy put - = %+v", r)
	}
	var p policyView
	decode(t, admin.ok("policy", "get", "ci", "-o", "json"), &p)
	if p.Role != "ci" || p.YAML != doc2 || p.Author != "root" || p.Updated == "" {
		t.Fatalf("policy get -o json = %+v", p)
	}
	if r := admin.runIn(doc, "policy", "put", "--file", "-", "-o", "json"); r.code != 0 {
		t.Fatalf("policy put --file - = %+v", r)
	}

	// The role applies as soon as `policy put` returns, and a new token
	// works as soon as `token create` prints it.
	ciToken, _ := admin.createToken("--principal", "app:ci", "--role", "ci")
	if r := admin.run("policy", "check", "--principal", "app:ci", "--role", "ci", "--action", "read", "--path", "/ci/settings", "--exit-code"); r.code != 0 {
		t.Fatalf("policy ci not in effect right after policy put: %+v", r)
	}
	admin.put("/ci/settings", "fast")
	if got := admin.as(ciToken).ok("get", "/ci/settings"); got != "fast" {
		t.Fatalf("ci get = %q", got)
	}

	if got := admin.ok("policy", "rm", "ci"); got != "policy ci deleted\n" {
		t.Fatalf("policy rm printed %q", got)
	}
	if got := admin.fails("policy", "get", "ci"); !strings.Contains(got, "not found") {
		t.Fatalf("policy get after rm = %q", got)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"policy", "put"}, "graft: policy put: no policy: give FILE, or - to read stdin\n"},
		{[]string{"policy", "put", "a.yaml", "--file", "b.yaml"}, "graft: policy put: give the file as an argument or with --file, not both\n"},
		{[]string{"policy", "get"}, "graft: policy get: missing ROLE (usage: graft policy get ROLE [flags])\n"},
	} {
		if got := admin.fails(tt.args...); got != tt.want {
			t.Errorf("graft %s:\n got %q\nwant %q", strings.Join(tt.args, " "), got, tt.want)
		}
	}
}

func TestPolicyInitIsIdempotent(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)

	// graftd --dev installed the defaults.
	for range 2 {
		if got := admin.ok("policy", "init"); got != "installed: none\nkept: admin, app, dba\n" {
			t.Fatalf("policy init on a dev graftd printed %q", got)
		}
	}
	admin.ok("policy", "rm", "dba")
	if got := admin.ok("policy", "init"); got != "installed: dba\nkept: admin, app\n" {
		t.Fatalf("policy init after rm dba printed %q", got)
	}
	var v policyInitView
	decode(t, admin.ok("policy", "init", "-o", "json"), &v)
	if len(v.Installed) != 0 || strings.Join(v.Kept, ",") != "admin,app,dba" {
		t.Fatalf("policy init -o json = %+v", v)
	}
	// An edited dba policy (as an older graftd installed it) is kept,
	// and named as differing; --overwrite puts the default back.
	old := filepath.Join(t.TempDir(), "dba.yaml")
	if err := os.WriteFile(old, []byte("role: dba\nrules:\n  - allow: [read, list, write, delete, share]\n    paths: [/dba/**]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	admin.ok("policy", "put", old)
	got := admin.ok("policy", "init")
	if !strings.HasPrefix(got, "installed: none\nkept: admin, app, dba\ndba differs from the default policy") || !strings.Contains(got, "graft policy init --overwrite") {
		t.Fatalf("policy init with an edited dba printed %q", got)
	}
	decode(t, admin.ok("policy", "init", "-o", "json"), &v)
	if strings.Join(v.Differing, ",") != "dba" {
		t.Fatalf("policy init -o json with an edited dba = %+v", v)
	}
	if got := admin.ok("policy", "init", "--overwrite"); got != "installed: admin, app, dba\nkept: none\n" {
		t.Fatalf("policy init --overwrite printed %q", got)
	}
	if got := admin.ok("policy", "init"); got != "installed: none\nkept: admin, app, dba\n" {
		t.Fatalf("policy init after --overwrite printed %q", got)
	}
}

func TestPolicyCheckExplains(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	check := []string{"policy", "check", "--principal", "app:message-processor", "--role", "app"}

	tests := []struct {
		action, path string
		verdict      string
		rule         string // the rule line
	}{
		{"read", "/app/message-processor/config/x", "allowed", `^allow \[.*\bread\b.*\] /app/\{name\}/\*\* \(role app\)$`},
		{"write", "/app/message-processor/replicated/db/password", "denied", `^deny \[.*\bwrite\b.*\] /app/\{name\}/replicated/\*\* \(role app\)$`},
		{"read", "/dba/orders/postgres/password", "denied", `^none matched$`},
		{"read", "/app/message-processor-evil/x", "denied", `^none matched$`},
	}
	for _, tt := range tests {
		r := admin.run(append(check, "--action", tt.action, "--path", tt.path)...)
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		wantCode := 0
		if tt.verdict == "denied" {
			wantCode = exitDenied // the answer is the exit status, for scripts
		}
		if r.code != wantCode || r.stderr != "" || len(lines) != 4 {
			t.Fatalf("policy check %s %s = %+v; want exit %d and four lines", tt.action, tt.path, r, wantCode)
		}
		if lines[0] != tt.verdict || !strings.HasPrefix(lines[1], "reason: ") || len(lines[1]) < len("reason: ")+10 || lines[3] != "roles: app" {
			t.Errorf("policy check %s %s =\n%s", tt.action, tt.path, r.stdout)
		}
		rule, _ := strings.CutPrefix(lines[2], "rule: ")
		if !regexp.MustCompile(tt.rule).MatchString(rule) {
			t.Errorf("policy check %s %s: rule line %q, want %s", tt.action, tt.path, lines[2], tt.rule)
		}
	}
	// The denial names principal, action and path.
	r := admin.run(append(check, "--action", "read", "--path", "/dba/orders/postgres/password")...)
	if reason := strings.Split(r.stdout, "\n")[1]; !strings.Contains(reason, "app:message-processor") || !strings.Contains(reason, "/dba/orders/postgres/password") {
		t.Errorf("denial reason %q does not name the principal and path", reason)
	}

	// --exit-code (now the default) still works; --exit-zero answers a
	// denial with 0 and the same output.
	r = admin.run(append(check, "--action", "read", "--path", "/dba/x", "--exit-code")...)
	if r.code != exitDenied || !strings.HasPrefix(r.stdout, "denied\n") || r.stderr != "" {
		t.Fatalf("policy check --exit-code of a denial = %+v; want exit 3", r)
	}
	if r := admin.run(append(check, "--action", "read", "--path", "/dba/x", "--exit-zero")...); r.code != 0 || !strings.HasPrefix(r.stdout, "denied\n") {
		t.Fatalf("policy check --exit-zero of a denial = %+v; want exit 0", r)
	}
	if r := admin.run(append(check, "--action", "read", "--path", "/app/message-processor/x", "--exit-code")...); r.code != 0 || !strings.HasPrefix(r.stdout, "allowed\n") {
		t.Fatalf("policy check --exit-code of an allowed action = %+v", r)
	}

	var d decisionView
	decode(t, admin.ok(append(check, "--action", "write", "--path", "/app/message-processor/replicated/db", "-o", "json", "--exit-zero")...), &d)
	if d.Allowed || d.Role != "app" || !strings.HasPrefix(d.Rule, "deny ") || d.Reason == "" || strings.Join(d.EffectiveRoles, ",") != "app" {
		t.Fatalf("policy check -o json = %+v", d)
	}

	// Without --role a principal has only the roles policies bind to it.
	if out := admin.ok("policy", "check", "--principal", "user:alice", "--action", "read", "--path", "/dba/x", "--exit-zero"); !strings.HasPrefix(out, "denied\n") || !strings.HasSuffix(out, "roles: none\n") {
		t.Fatalf("policy check without roles =\n%s", out)
	}

	got := admin.fails(append(check, "--action", "fly", "--path", "/dba/x")...)
	if !strings.Contains(got, `unknown action "fly"`) {
		t.Fatalf("policy check with an unknown action = %q", got)
	}
	if got := admin.fails("policy", "check", "--principal", "app:x"); got != "graft: policy check: give --action, --path\n" {
		t.Fatalf("policy check without --action and --path = %q", got)
	}
}

func TestAudit(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	admin.put("/dba/orders/postgres/password", "dba-secret")
	token, _ := admin.createToken("--principal", "app:message-processor", "--role", "app")
	app := admin.as(token)
	const value = "audit-must-not-see-this"
	rev := app.put("/app/message-processor/config/x", value)
	app.fails("get", "/dba/orders/postgres/password")

	// A write is audited before it is answered; a denied read may be
	// audited just after.
	var out string
	var put, denied *auditRecordView
	for start := time.Now(); denied == nil && time.Since(start) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		out = admin.ok("audit", "--principal", "app:message-processor", "-o", "json")
		for line := range strings.Lines(out) {
			var v auditRecordView
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				t.Fatalf("audit -o json line %q is not one JSON object: %v", line, err)
			}
			if v.Principal != "app:message-processor" {
				t.Fatalf("audit --principal app:message-processor returned %+v", v)
			}
			switch {
			case v.Method == "Put" && v.Path == "/app/message-processor/config/x" && v.Revision == rev:
				put = &v
			case v.Path == "/dba/orders/postgres/password" && v.Result == "denied":
				denied = &v
			}
		}
	}
	if strings.Contains(out, value) || strings.Contains(out, "dba-secret") || strings.Contains(out, token) {
		t.Fatalf("audit -o json shows a value or a token:\n%s", out)
	}
	if put == nil || put.Action != "write" || !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(put.ValueHMAC) {
		t.Fatalf("audit has no Put of /app/message-processor/config/x at revision %d with a value_hmac:\n%s", rev, out)
	}
	if denied == nil || denied.Action != "read" {
		t.Fatalf("audit has no denied read of /dba/orders/postgres/password:\n%s", out)
	}
	if _, err := time.Parse(time.RFC3339Nano, put.Time); err != nil || put.RequestID == "" {
		t.Fatalf("audit record lacks a time or request id: %+v", put)
	}

	// The table, with the trailing slash ls accepts.
	table := admin.ok("audit", "--path", "/app/message-processor/", "--since", "1h")
	lines := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	assertTable(t, lines[0], [][]string{{"TIME", "PRINCIPAL", "METHOD", "ACTION", "PATH", "RESULT", "REVISION"}})
	found := false
	for _, line := range lines[1:] {
		if strings.Contains(line, "/app/message-processor-") || !strings.Contains(line, "/app/message-processor") {
			t.Fatalf("audit --path /app/message-processor/ listed %q", line)
		}
		cells := regexp.MustCompile(`\s{2,}`).Split(line, -1)
		if len(cells) == 7 && cells[1] == "app:message-processor" && cells[2] == "Put" && cells[4] == "/app/message-processor/config/x" && cells[6] == strconv.FormatInt(rev, 10) {
			found = true
		}
	}
	if !found {
		t.Fatalf("audit table has no row for the Put at revision %d:\n%s", rev, table)
	}

	// --since takes an RFC3339 time too; nothing happened in the future.
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if r := admin.run("audit", "--since", future); r.code != 0 || r.stdout != "" || r.stderr != "no audit records match\n" {
		t.Fatalf("audit --since %s = %+v", future, r)
	}
	var few []auditRecordView
	for line := range strings.Lines(admin.ok("audit", "--limit", "2", "-o", "json")) {
		var v auditRecordView
		decode(t, line, &v)
		few = append(few, v)
	}
	if len(few) != 2 {
		t.Fatalf("audit --limit 2 returned %d records", len(few))
	}

	if got := app.fails("audit"); got != "graft: permission denied: app:message-processor may not admin /\n" {
		t.Fatalf("audit by an application = %q", got)
	}
	if got := admin.fails("audit", "--since", "yesterday"); got != "graft: audit: --since \"yesterday\" is neither a duration such as 1h nor an RFC3339 time such as 2026-11-22T10:00:00Z\n" {
		t.Fatalf("audit --since yesterday = %q", got)
	}
	if got := admin.fails("audit", "--path", "/app/../dba"); !strings.HasPrefix(got, "graft: audit --path /app/../dba: ") {
		t.Fatalf("audit --path /app/../dba = %q", got)
	}
	if got := admin.fails("audit", "--limit", "-1"); !strings.Contains(got, "want 1 to 10000 (0 means the default, 100)") {
		t.Fatalf("audit --limit -1 = %q", got)
	}
}

// A request that failed is audited as an error with its code, not as ok.
func TestAuditRecordsFailures(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	admin.fails("policy", "rm", "nosuch")
	admin.fails("get", "/t/audit/missing")

	wantFailed := map[string]string{"DeletePolicy": "NotFound", "Get": "NotFound"}
	var out string
	for start := time.Now(); len(wantFailed) > 0 && time.Since(start) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		out = admin.ok("audit", "-o", "json")
		for line := range strings.Lines(out) {
			var v auditRecordView
			decode(t, line, &v)
			if code, ok := wantFailed[v.Method]; ok && v.Code == code {
				if v.Result != "error" {
					t.Fatalf("%s failed with %s but is audited as %q, want \"error\":\n%s", v.Method, v.Code, v.Result, line)
				}
				delete(wantFailed, v.Method)
			}
		}
	}
	if len(wantFailed) > 0 {
		t.Fatalf("no audit record of the failed %v:\n%s", wantFailed, out)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		in, want string // want "" for an error
	}{
		{"1h", "2026-11-22T09:00:00Z"},
		{"90s", "2026-11-22T09:58:30Z"},
		{"2026-11-21T08:00:00Z", "2026-11-21T08:00:00Z"},
		{"2026-11-21T10:00:00.5+02:00", "2026-11-21T08:00:00.5Z"},
		{"-1h", ""},
		{"1d", ""},
		{"2026-11-21", ""},
	} {
		got, err := parseSince(tt.in, now)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("parseSince(%q) = %v, want an error", tt.in, got)
		case tt.want != "" && (err != nil || got.UTC().Format(time.RFC3339Nano) != tt.want):
			t.Errorf("parseSince(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}

// graft policy rm admin is refused while it is the last policy granting
// admin: it used to lock every admin-token holder out.
func TestPolicyRmLastAdmin(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	got := c.fails("policy", "rm", "admin")
	if !strings.HasPrefix(got, "graft: policy rm admin: it is the last policy that grants admin on /;") || !strings.Contains(got, "repeat with --force") {
		t.Fatalf("policy rm admin: %q", got)
	}
	c.ok("policy", "get", "admin")
	if out := c.ok("policy", "rm", "admin", "--force"); out != "policy admin deleted\n" {
		t.Fatalf("policy rm admin --force: %q", out)
	}
}

// A prefix restore is refused, and audited as denied, for a caller that
// may write nothing under the prefix; a caller that may write part of it
// gets that part and a note that the rest was left alone. (An app used to
// hear "nothing to do", exit 0, audited as allowed.)
func TestRestorePrefixKeepsToWhatTheCallerMayChange(t *testing.T) {
	g := graftdtest.Start(t)
	admin := newCLI(t, g)
	admin.put("/dba/passpack/k", "v1")
	at := time.Now().UTC().Format(time.RFC3339Nano)
	admin.put("/dba/passpack/k", "v2")

	appToken, _ := admin.createToken("--principal", "app:mp", "--role", "app")
	app := admin.as(appToken)
	for _, dry := range [][]string{{"--dry-run"}, nil} {
		args := append([]string{"restore", "/dba/passpack", "--at", at}, dry...)
		if got, want := app.fails(args...), "graft: permission denied: app:mp may not write /dba/passpack\n"; got != want {
			t.Errorf("app: graft %s:\n got %q\nwant %q", strings.Join(args, " "), got, want)
		}
	}
	// Denials are audited asynchronously: wait for both records.
	var results []string
	testenv.WaitFor(t, 5*time.Second, func() bool {
		results = nil
		for line := range strings.Lines(admin.ok("audit", "--principal", "app:mp", "-o", "json")) {
			var r struct{ Method, Result string }
			if json.Unmarshal([]byte(line), &r) == nil && r.Method == "RestorePrefix" {
				results = append(results, r.Result)
			}
		}
		return len(results) >= 2
	})
	if strings.Join(results, ",") != "denied,denied" {
		t.Errorf("the app's refused restores audited as %v, want denied twice", results)
	}

	// A DBA who may see all of /t but write only /t/mine.
	policy := filepath.Join(t.TempDir(), "part.yaml")
	os.WriteFile(policy, []byte("role: part\nrules:\n  - allow: [read, list]\n    paths: [/t/**]\n  - allow: [write, delete]\n    paths: [/t/mine/**]\n"), 0o600)
	admin.ok("policy", "put", policy)
	admin.put("/t/mine/a", "a1")
	admin.put("/t/other/b", "b1")
	at = time.Now().UTC().Format(time.RFC3339Nano)
	admin.put("/t/mine/a", "a2")
	admin.put("/t/other/b", "b2")
	partToken, _ := admin.createToken("--principal", "user:part", "--role", "part")
	part := admin.as(partToken)
	r := part.run("restore", "/t", "--at", at)
	if r.code != 0 || !strings.Contains(r.stdout, "/t/mine/a") || strings.Contains(r.stdout, "/t/other/b") {
		t.Fatalf("partial restore: %+v", r)
	}
	if r.stderr != "note: left as they are: 1 path under /t that you may see but not change\n" {
		t.Errorf("partial restore's note: %q", r.stderr)
	}
	if got := admin.ok("get", "/t/mine/a"); got != "a1" {
		t.Errorf("/t/mine/a after the partial restore = %q, want a1", got)
	}
	if got := admin.ok("get", "/t/other/b"); got != "b2" {
		t.Errorf("/t/other/b, out of reach, = %q, want b2 untouched", got)
	}
}
