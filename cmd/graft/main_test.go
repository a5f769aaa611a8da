package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/cmdline"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// cli runs graft in-process against one graftd, with GRAFT_ADDR and
// GRAFT_TOKEN set as a user would.
type cli struct {
	t   *testing.T
	env map[string]string
}

func newCLI(t *testing.T, g *graftdtest.Graftd) *cli {
	return &cli{t: t, env: map[string]string{"GRAFT_ADDR": g.Addr, "GRAFT_TOKEN": g.Token}}
}

type result struct {
	stdout, stderr string
	code           int
}

func (c *cli) run(args ...string) result { return c.runIn("", args...) }

// runIn runs graft with stdin holding in.
func (c *cli) runIn(in string, args ...string) result {
	c.t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(c.t.Context(), args, strings.NewReader(in), &stdout, &stderr, c.getenv)
	return result{stdout.String(), stderr.String(), code}
}

func (c *cli) getenv(k string) string { return c.env[k] }

// ok runs graft and fails the test unless it succeeds silently on stderr.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 || r.stderr != "" {
		c.t.Fatalf("graft %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// fails runs graft, expects exit code 1 with nothing on stdout, and
// returns the stderr line.
func (c *cli) fails(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "graft: ") || strings.Count(r.stderr, "\n") != 1 {
		c.t.Fatalf("graft %s: exit %d, stdout %q, stderr %q; want exit 1 and one line on stderr", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stderr
}

var revisionLine = regexp.MustCompile(`^(/\S+) revision (\d+)\n$`)

// put writes a value through the CLI and returns its revision.
func (c *cli) put(path, value string) int64 {
	c.t.Helper()
	out := c.ok("put", path, value)
	m := revisionLine.FindStringSubmatch(out)
	if m == nil || m[1] != path {
		c.t.Fatalf("graft put printed %q, want %q", out, path+" revision N")
	}
	n, _ := strconv.ParseInt(m[2], 10, 64)
	return n
}

func TestPutGet(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))

	c.put("/t/pg/a", "p@ssW0rd!1")
	if got := c.ok("get", "/t/pg/a"); got != "p@ssW0rd!1" {
		t.Fatalf("get = %q, want the value exactly, without a newline", got)
	}

	file := filepath.Join(t.TempDir(), "value")
	content := "line one\nline two\n\x00\xff"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	c.ok("put", "/t/pg/file", "--file", file)
	if got := c.ok("get", "/t/pg/file"); got != content {
		t.Fatalf("get after put --file = %q, want %q", got, content)
	}

	// With no value, or with -, put reads standard input, as etcdctl and
	// vault do; - used to be stored as the one-byte value "-".
	for _, args := range [][]string{{"put", "/t/pg/piped"}, {"put", "/t/pg/dash", "-"}} {
		if r := c.runIn("piped\n", args...); r.code != 0 {
			t.Fatalf("graft %v with a value on stdin: %+v", args, r)
		}
		if got := c.ok("get", args[1]); got != "piped\n" {
			t.Fatalf("get %s after put from stdin = %q", args[1], got)
		}
	}
	if r := c.runIn("from stdin\n", "put", "/t/pg/stdin", "--file", "-"); r.code != 0 {
		t.Fatalf("put --file -: %+v", r)
	}
	if got := c.ok("get", "/t/pg/stdin"); got != "from stdin\n" {
		t.Fatalf("get after put --file - = %q", got)
	}

	tests := []struct {
		args []string
		want string
	}{
		{[]string{"put", "/t/pg/none"}, "graft: put: no value: standard input was empty; give VALUE, --file FILE, or pipe the value in\n"},
		{[]string{"put", "/t/pg/both", "v", "--file", file}, "graft: put: give the value as an argument or with --file, not both\n"},
		{[]string{"get"}, "graft: get: missing PATH (usage: graft get PATH [flags])\n"},
		{[]string{"put", "/t/pg/x", "secret", "words"}, "graft: put: 3 arguments given, at most 2 accepted (usage: graft put PATH [VALUE] [flags])\n"},
		{[]string{"get", "/app/x/db"}, "graft: get /app/x/db: not found (see `graft ls /app/x`)\n"},
		{[]string{"get", "/t/pg/a", "--revision", "1"}, "graft: get /t/pg/a at revision 1: not found (see `graft history /t/pg/a` for the retained revisions)\n"},
		{[]string{"put", "/t/../x", "v"}, "graft: put /t/../x: invalid path: segment \"..\" is not allowed\n"},
		{[]string{"get", "/t/pg/a", "-o", "xml"}, "graft: invalid output format \"xml\": use -o table, -o json or -o yaml\n"},
		{[]string{"get", "/t/pg/a", "--bogus"}, "graft: unknown flag: --bogus (see 'graft get --help')\n"},
	}
	for _, tt := range tests {
		if got := c.fails(tt.args...); got != tt.want {
			t.Errorf("graft %s:\n got %q\nwant %q", strings.Join(tt.args, " "), got, tt.want)
		}
	}
}

func TestGetAddsNewlineOnlyOnATerminal(t *testing.T) {
	g := graftdtest.Start(t)
	c := newCLI(t, g)
	c.put("/t/term/a", "no-newline")
	c.put("/t/term/b", "has-newline\n")
	for _, tt := range []struct {
		path     string
		terminal bool
		want     string
	}{
		{"/t/term/a", true, "no-newline\n"},
		{"/t/term/b", true, "has-newline\n"},
		{"/t/term/a", false, "no-newline"},
	} {
		var stdout, stderr bytes.Buffer
		a := &app{Globals: cmdline.Globals{Stdout: &stdout, Getenv: c.getenv}, stdin: strings.NewReader(""), stderr: &stderr,
			isTerminal: func(io.Writer) bool { return tt.terminal }}
		cmd := a.rootCmd()
		cmd.SetArgs([]string{"get", tt.path})
		if err := cmd.ExecuteContext(t.Context()); err != nil {
			t.Fatal(err)
		}
		if stdout.String() != tt.want {
			t.Errorf("get %s on terminal=%v = %q, want %q", tt.path, tt.terminal, stdout.String(), tt.want)
		}
	}
}

func TestOutputFormats(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	rev := c.put("/t/out/text", "hello")
	c.ok("put", "/t/out/bin", "--file", writeFile(t, "\xff\xfe"))

	var e map[string]any
	decode(t, c.ok("get", "/t/out/text", "-o", "json"), &e)
	if e["path"] != "/t/out/text" || e["value"] != "hello" || e["revision"] != float64(rev) || e["author"] != "root" || e["size"] != float64(5) {
		t.Fatalf("get -o json = %v", e)
	}
	if _, err := time.Parse(time.RFC3339, e["time"].(string)); err != nil {
		t.Fatalf("time %q is not RFC3339: %v", e["time"], err)
	}
	if _, ok := e["value_base64"]; ok {
		t.Fatalf("a UTF-8 value also came as value_base64: %v", e)
	}

	e = nil
	decode(t, c.ok("get", "/t/out/bin", "-o", "json"), &e)
	if e["value_base64"] != "//4=" || e["value"] != nil {
		t.Fatalf("binary get -o json = %v, want value_base64 //4= and no value", e)
	}

	y := c.ok("get", "/t/out/text", "-o", "yaml")
	for _, want := range []string{"path: /t/out/text\n", "value: hello\n", "revision: " + strconv.FormatInt(rev, 10) + "\n", "author: root\n"} {
		if !strings.Contains(y, want) {
			t.Fatalf("get -o yaml = %q, want it to contain %q", y, want)
		}
	}

	// put -o json reports the entry without its value.
	e = nil
	decode(t, c.ok("put", "/t/out/text", "again", "-o", "json"), &e)
	if e["path"] != "/t/out/text" || e["revision"].(float64) <= float64(rev) || e["value"] != nil {
		t.Fatalf("put -o json = %v", e)
	}
}

func TestListHistoryRestoreRemove(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	a1 := c.put("/t/tree/a", "a1")
	c.put("/t/tree/dir/x", "x")
	c.put("/t/tree/dir/y", "y")
	c.put("/t/tree-evil/z", "z")

	out := c.ok("ls", "/t/tree/")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "PATH") || !strings.HasPrefix(lines[1], "/t/tree/a ") || strings.TrimSpace(lines[2]) != "/t/tree/dir/" {
		t.Fatalf("ls =\n%s", out)
	}
	if fields := strings.Fields(lines[1]); len(fields) != 4 || fields[1] != strconv.FormatInt(a1, 10) || fields[2] != "root" {
		t.Fatalf("ls row = %q, want path, revision %d, author, time", lines[1], a1)
	}

	var items []struct {
		Path      string `json:"path"`
		Directory bool   `json:"directory"`
	}
	decode(t, c.ok("ls", "/t/tree", "-r", "-o", "json"), &items)
	var paths []string
	for _, it := range items {
		paths = append(paths, it.Path)
	}
	if got, want := strings.Join(paths, " "), "/t/tree/a /t/tree/dir/x /t/tree/dir/y"; got != want {
		t.Fatalf("ls -r -o json paths = %s, want %s", got, want)
	}
	if r := c.run("ls", "/t/empty"); r.code != 0 || r.stdout != "" || r.stderr != "nothing under /t/empty\n" {
		t.Fatalf("ls of an empty prefix = %+v", r)
	}

	a2 := c.put("/t/tree/a", "a2")
	out = c.ok("restore", "/t/tree/a", "--revision", strconv.FormatInt(a1, 10))
	m := regexp.MustCompile(`^/t/tree/a revision (\d+) \(restored from revision (\d+)\)\n$`).FindStringSubmatch(out)
	if m == nil || m[2] != strconv.FormatInt(a1, 10) {
		t.Fatalf("restore --revision printed %q", out)
	}
	a3 := m[1]
	if got := c.ok("get", "/t/tree/a"); got != "a1" {
		t.Fatalf("after restore get = %q, want a1", got)
	}

	out = c.ok("history", "/t/tree/a")
	want := [][]string{
		{"REVISION", "TIME", "AUTHOR", "NOTE"},
		{a3, "*", "root", "current, restored from rev " + strconv.FormatInt(a1, 10)},
		{strconv.FormatInt(a2, 10), "*", "root", ""},
		{strconv.FormatInt(a1, 10), "*", "root", ""},
	}
	assertTable(t, out, want)

	rmOut := c.ok("rm", "/t/tree/dir/x")
	if !regexp.MustCompile(`^/t/tree/dir/x deleted at revision \d+\n$`).MatchString(rmOut) {
		t.Fatalf("rm printed %q", rmOut)
	}
	if got := c.fails("get", "/t/tree/dir/x"); got != "graft: get /t/tree/dir/x: not found (see `graft ls /t/tree/dir`)\n" {
		t.Fatalf("get after rm: %q", got)
	}
	// The deletion has a row of its own, at its own revision, above the
	// version it ended.
	assertTable(t, c.ok("history", "/t/tree/dir/x"), [][]string{{"REVISION", "TIME", "AUTHOR", "NOTE"}, {"*", "*", "root", "deleted"}, {"*", "*", "root"}})
	if got := c.fails("rm", "/t/tree/dir/x"); got != "graft: delete /t/tree/dir/x: not found\n" {
		t.Fatalf("second rm: %q", got)
	}
}

func TestCompareAndSwap(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	first := strings.TrimSpace(c.ok("put", "/t/cas/a", "v1", "--if-revision", "0"))
	rev := strings.TrimPrefix(first, "/t/cas/a revision ")

	got := c.fails("put", "/t/cas/a", "v2", "--if-revision", "0")
	if !strings.HasPrefix(got, "graft: put /t/cas/a: ") || !strings.Contains(got, "expected the path not to exist but it is at revision "+rev) {
		t.Fatalf("CAS conflict = %q", got)
	}
	got = c.fails("rm", "/t/cas/a", "--if-revision", "1")
	if !strings.Contains(got, "expected revision 1 but it is at revision "+rev+"; read it again and retry") {
		t.Fatalf("rm CAS conflict = %q", got)
	}
	c.ok("put", "/t/cas/a", "v2", "--if-revision", rev)
	if v := c.ok("get", "/t/cas/a"); v != "v2" {
		t.Fatalf("after a successful swap get = %q", v)
	}
}

func TestRestorePrefixAt(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	a1 := c.put("/t/pit/a", "a1")
	// A time with fractional seconds means exactly that instant.
	at := time.Now().UTC().Format("2006-01-02T15:04:05.000000000Z07:00")
	a2 := c.put("/t/pit/a", "a2")
	b := c.put("/t/pit/b", "new")

	out := c.ok("restore", "/t/pit/", "--at", at, "--dry-run")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	assertTable(t, strings.Join(lines[:len(lines)-1], "\n"), [][]string{
		{"ACTION", "PATH", "FROM", "TO", "NEW", "REASON"},
		{"restore", "/t/pit/a", strconv.FormatInt(a2, 10), strconv.FormatInt(a1, 10), "-"},
		{"delete", "/t/pit/b", strconv.FormatInt(b, 10), "-", "-"},
	})
	if summary := lines[len(lines)-1]; !strings.HasPrefix(summary, "dry run: would restore 1, delete 1 and skip 0 paths under /t/pit as of ") || !strings.HasSuffix(summary, "; nothing was changed") {
		t.Fatalf("dry-run summary = %q", summary)
	}
	if v := c.ok("get", "/t/pit/a"); v != "a2" {
		t.Fatalf("a dry run changed /t/pit/a to %q", v)
	}

	var plan restorePrefixView
	decode(t, c.ok("restore", "/t/pit", "--at", at, "--dry-run", "-o", "json"), &plan)
	if !plan.DryRun || plan.Prefix != "/t/pit" || len(plan.Steps) != 2 || plan.Steps[0].Action != "restore" || plan.Steps[1].Action != "delete" {
		t.Fatalf("restore --dry-run -o json = %+v", plan)
	}

	out = c.ok("restore", "/t/pit", "--at", at)
	if !strings.Contains(out, "\nrestored 1, deleted 1 and skipped 0 paths under /t/pit as of ") {
		t.Fatalf("restore --at printed:\n%s", out)
	}
	if v := c.ok("get", "/t/pit/a"); v != "a1" {
		t.Fatalf("after restore --at get = %q, want a1", v)
	}
	if got := c.fails("get", "/t/pit/b"); got != "graft: get /t/pit/b: not found (see `graft ls /t/pit`)\n" {
		t.Fatalf("after restore --at: %q", got)
	}
	if out := c.ok("restore", "/t/pit", "--at", at); !strings.HasPrefix(out, "nothing to do: /t/pit is already as it was at ") {
		t.Fatalf("second restore --at printed %q", out)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"restore", "/t/pit"}, "graft: restore: give exactly one of --revision N (one path) or --at TIME (a whole prefix)\n"},
		{[]string{"restore", "/t/pit/a", "--revision", "3", "--at", at}, "graft: restore: give exactly one of --revision N (one path) or --at TIME (a whole prefix)\n"},
		{[]string{"restore", "/t/pit/a", "--revision", "3", "--dry-run"}, "graft: restore: --dry-run goes with --at; a --revision restore changes one path, shown by graft get PATH --revision N\n"},
		{[]string{"restore", "/t/pit", "--at", "yesterday"}, "graft: restore: --at \"yesterday\" is neither a duration such as 10m (that long ago) nor an RFC3339 time such as 2026-11-22T10:00:00Z\n"},
	} {
		if got := c.fails(tt.args...); got != tt.want {
			t.Errorf("graft %s:\n got %q\nwant %q", strings.Join(tt.args, " "), got, tt.want)
		}
	}
}

// --revision -N counts versions back from the current one.
func TestRestoreCountsBack(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	c.put("/t/back/a", "one")
	c.put("/t/back/a", "two")
	c.put("/t/back/a", "three")
	c.ok("restore", "/t/back/a", "--revision", "-2")
	if got := c.ok("get", "/t/back/a"); got != "one" {
		t.Fatalf("after --revision -2: %q, want one", got)
	}
	c.ok("restore", "/t/back/a", "--revision", "-1")
	if got := c.ok("get", "/t/back/a"); got != "three" {
		t.Fatalf("after --revision -1: %q, want three (the version before the current one)", got)
	}
	if got := c.fails("restore", "/t/back/a", "--revision", "-9"); !strings.Contains(got, "--revision -9: it keeps only 4 earlier version(s)") {
		t.Fatalf("too far back: %q", got)
	}
}

func TestParseAt(t *testing.T) {
	for _, tt := range []struct {
		in, want string
	}{
		// A whole second covers the versions history lists at that second.
		{"2026-11-22T10:00:00Z", "2026-11-22T10:00:00.999999999Z"},
		{"2026-11-22T12:00:00+02:00", "2026-11-22T10:00:00.999999999Z"},
		{"2026-11-22T10:00:00.5Z", "2026-11-22T10:00:00.5Z"},
		{"2026-11-22T10:00:00.000Z", "2026-11-22T10:00:00Z"},
		// A duration is that long before now, exactly.
		{"10m", "2026-11-22T09:50:00Z"},
		{"1h30m", "2026-11-22T08:30:00Z"},
	} {
		got, err := parseAt(tt.in, time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
		if err != nil || got.UTC().Format(time.RFC3339Nano) != tt.want {
			t.Errorf("parseAt(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"yesterday", "-5m", "2026-11-22"} {
		if _, err := parseAt(bad, time.Now()); err == nil || !strings.HasPrefix(err.Error(), "restore: --at ") {
			t.Errorf("parseAt(%q) = %v; want an error naming --at", bad, err)
		}
	}
}

func TestConnectionErrors(t *testing.T) {
	g := graftdtest.Start(t)
	c := newCLI(t, g)

	c.env["GRAFT_TOKEN"] = ""
	if got, want := c.fails("get", "/t/x"), "graft: no token: set GRAFT_TOKEN or pass --token (graftd --dev prints one and writes it to graft-data/root-token)\n"; got != want {
		t.Fatalf("no token:\n got %q\nwant %q", got, want)
	}
	// --token and --addr win over the environment.
	c.env["GRAFT_TOKEN"] = "wrong-token-value"
	c.env["GRAFT_ADDR"] = testenv.FreeAddr(t)
	if got := c.fails("get", "/app/x/db", "--token", g.Token, "--addr", g.Addr); got != "graft: get /app/x/db: not found (see `graft ls /app/x`)\n" {
		t.Fatalf("with --token and --addr: %q", got)
	}

	c.env["GRAFT_ADDR"] = g.Addr
	got := c.fails("get", "/t/x")
	if !strings.HasSuffix(got, "; check GRAFT_TOKEN\n") || strings.Contains(got, "wrong-token-value") {
		t.Fatalf("wrong token: %q", got)
	}

	c.env["GRAFT_TOKEN"] = g.Token
	down := testenv.FreeAddr(t)
	if got, want := c.fails("get", "/t/x", "--addr", down), "graft: cannot reach graftd at "+down+": connect: connection refused; is it running? (make run)\n"; got != want {
		t.Fatalf("graftd down:\n got %q\nwant %q", got, want)
	}
	if got, want := c.fails("get", "/t/x", "--timeout", "1ns"), "graft: graftd at "+g.Addr+" did not answer within 1ns; is it running? (--timeout sets the limit)\n"; got != want {
		t.Fatalf("timeout:\n got %q\nwant %q", got, want)
	}
	if got := c.fails("get", "/t/x", "--addr", "192.0.2.1:7420"); !strings.HasPrefix(got, "graft: refusing a plaintext connection to 192.0.2.1:7420") {
		t.Fatalf("plaintext to a remote address: %q", got)
	}
	c.env["GRAFT_INSECURE"] = "maybe"
	if got := c.fails("get", "/t/x"); got != "graft: GRAFT_INSECURE=\"maybe\" is not a boolean: use 1 or 0\n" {
		t.Fatalf("bad GRAFT_INSECURE: %q", got)
	}
	delete(c.env, "GRAFT_INSECURE")
	c.env["GRAFT_CA_FILE"] = writeFile(t, "not a certificate")
	if got := c.fails("get", "/t/x"); !strings.HasSuffix(got, "holds no PEM certificate\n") {
		t.Fatalf("bad CA file: %q", got)
	}
}

func TestWatch(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	first := c.put("/t/watch/a", "secret-a")
	c.put("/t/watch-evil/x", "x")
	del := strings.TrimSpace(c.ok("rm", "/t/watch/a"))
	delRev := del[strings.LastIndex(del, " ")+1:]

	// watch runs until its context ends (Ctrl-C), then exits 0.
	watch := func(args ...string) *watchRun {
		ctx, cancel := context.WithCancel(t.Context())
		w := &watchRun{t: t, cancel: cancel, done: make(chan int, 1)}
		go func() { w.done <- run(ctx, args, strings.NewReader(""), &w.stdout, &w.stderr, c.getenv) }()
		return w
	}

	w := watch("watch", "/t/watch/", "--from-revision", strconv.FormatInt(first, 10))
	b := c.put("/t/watch/b", "secret-b")
	lines := w.waitLines(3)
	want := []string{
		strconv.FormatInt(first, 10) + " put /t/watch/a root",
		delRev + " delete /t/watch/a root", // who deleted it, as history says
		strconv.FormatInt(b, 10) + " put /t/watch/b root",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("watch printed\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if r := w.stop(); r.code != 0 || r.stderr != "" || strings.Contains(r.stdout, "secret") {
		t.Fatalf("watch ended with %+v; want exit 0, no stderr, no values", r)
	}

	w = watch("watch", "/t/watch", "--from-revision", strconv.FormatInt(first, 10), "--values")
	if lines := w.waitLines(1); lines[0] != strconv.FormatInt(first, 10)+` put /t/watch/a root "secret-a"` {
		t.Fatalf("watch --values printed %q", lines[0])
	}
	w.stop()

	w = watch("watch", "/t/watch", "--from-revision", strconv.FormatInt(first, 10), "-o", "json")
	lines = w.waitLines(3)
	var ev eventView
	decode(t, lines[1], &ev)
	if ev.Type != "delete" || ev.Path != "/t/watch/a" || strconv.FormatInt(ev.Revision, 10) != delRev || ev.Author != "root" || ev.Time == "" {
		t.Fatalf("watch -o json line = %+v", ev)
	}
	decode(t, lines[2], &ev)
	if ev.Type != "put" || ev.Path != "/t/watch/b" || ev.Author != "root" || ev.Value != nil || ev.Size != 8 {
		t.Fatalf("watch -o json line = %+v", ev)
	}
	w.stop()

	if got := c.fails("watch", "/t/watch", "--from-revision", "-5"); got != "graft: watch /t/watch: from revision -5 must not be negative\n" {
		t.Fatalf("watch with a negative revision: %q", got)
	}
	if got := c.fails("watch", "/t/watch", "--values", "--keys-only"); got != "graft: watch: --keys-only and --values exclude each other\n" {
		t.Fatalf("watch with both flags: %q", got)
	}
}

// watchRun is a graft watch running in the background.
type watchRun struct {
	t              *testing.T
	cancel         context.CancelFunc
	done           chan int
	stdout, stderr testenv.Buffer
}

// waitLines waits until the watch printed n lines, failing early if it
// exits.
func (w *watchRun) waitLines(n int) []string {
	w.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if out := strings.TrimSpace(w.stdout.String()); out != "" {
			if lines := strings.Split(out, "\n"); len(lines) >= n {
				return lines
			}
		}
		select {
		case code := <-w.done:
			w.t.Fatalf("watch exited with %d, stdout %q, stderr %q", code, w.stdout.String(), w.stderr.String())
		case <-deadline:
			w.t.Fatalf("watch printed %q, want %d lines", w.stdout.String(), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stop interrupts the watch as Ctrl-C does and returns how it ended.
func (w *watchRun) stop() result {
	w.cancel()
	code := <-w.done
	return result{w.stdout.String(), w.stderr.String(), code}
}

func TestKeyringVersionCompletion(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	c.put("/t/kr/a", "x")
	status := c.ok("keyring", "status")
	if !regexp.MustCompile(`^primary key: (\d+)\nkeys: [\d, ]+\n$`).MatchString(status) {
		t.Fatalf("keyring status = %q", status)
	}
	var st keyringView
	decode(t, c.ok("keyring", "status", "-o", "json"), &st)
	if st.PrimaryKeyID == 0 || len(st.KeyIDs) == 0 {
		t.Fatalf("keyring status -o json = %+v", st)
	}
	sweep := c.ok("keyring", "sweep")
	if !regexp.MustCompile(`^re-encrypted 0 of \d+ stored records; all are now under key \d+\n$`).MatchString(sweep) {
		t.Fatalf("keyring sweep = %q", sweep)
	}

	// Neither needs a token nor graftd.
	c.env = map[string]string{}
	if v := c.ok("version"); !regexp.MustCompile(`^graft \S+ \(go[^)]*\)\n$`).MatchString(v) {
		t.Fatalf("version = %q", v)
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out := c.ok("completion", shell); !strings.Contains(out, "graft") || len(out) < 500 {
			t.Fatalf("completion %s printed %d bytes", shell, len(out))
		}
	}
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// assertTable compares a table's rows split on runs of two or more spaces,
// cell by cell; "*" matches anything.
func assertTable(t *testing.T, out string, want [][]string) {
	t.Helper()
	split := regexp.MustCompile(`\s{2,}`)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("table has %d rows, want %d:\n%s", len(lines), len(want), out)
	}
	for i, line := range lines {
		cells := split.Split(strings.TrimRight(line, " "), -1)
		row := want[i]
		for len(cells) < len(row) {
			cells = append(cells, "")
		}
		for j, w := range row {
			if w != "*" && cells[j] != w {
				t.Fatalf("row %d cell %d = %q, want %q:\n%s", i, j, cells[j], w, out)
			}
		}
	}
}

// Errors say what to do next, name where the bad token came from, and do
// not echo a giant path back whole.
func TestErrorsSayWhatToDo(t *testing.T) {
	g := graftdtest.Start(t)
	c := newCLI(t, g)
	c.put("/t/e/dir/x", "v")
	if got, want := c.fails("get", "/t/e/dir"), "graft: get /t/e/dir: not found: /t/e/dir is a prefix with keys below it; list them with `graft ls /t/e/dir`\n"; got != want {
		t.Errorf("get of a prefix:\n got %q\nwant %q", got, want)
	}
	if got := c.fails("get", "/t/e/dir", "--token", "graft_wrong"); !strings.HasSuffix(got, "; check --token\n") {
		t.Errorf("a bad --token: %q, want it to name --token", got)
	}
	c.env["GRAFT_TOKEN"] = "graft_wrong"
	if got := c.fails("get", "/t/e/dir"); !strings.HasSuffix(got, "; check GRAFT_TOKEN\n") {
		t.Errorf("a bad GRAFT_TOKEN: %q, want it to name GRAFT_TOKEN", got)
	}
	c.env["GRAFT_TOKEN"] = g.Token
	long := "/" + strings.Repeat("a", 1100)
	if got := c.fails("get", long); len(got) > 200 || !strings.Contains(got, "(1101 bytes)") || !strings.Contains(got, "longer than 1024 bytes") {
		t.Errorf("a path over the limit: %d bytes of error, %q", len(got), got)
	}
}

// ls, get and history print one flat JSON shape: the entry's fields at the
// top level, nothing nested, no path twice.
func TestJSONIsOneFlatShape(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	c.put("/t/flat/a", "v")
	c.put("/t/flat/a/b", "w")
	var ls []map[string]any
	decode(t, c.ok("ls", "/t/flat", "-o", "json"), &ls)
	if len(ls) != 1 || ls[0]["path"] != "/t/flat/a" || ls[0]["directory"] != true || ls[0]["revision"] == nil || ls[0]["author"] != "root" {
		t.Fatalf("ls -o json = %v", ls)
	}
	var get map[string]any
	decode(t, c.ok("get", "/t/flat/a", "-o", "json"), &get)
	var hist []map[string]any
	decode(t, c.ok("history", "/t/flat/a", "-o", "json"), &hist)
	for name, obj := range map[string]map[string]any{"ls": ls[0], "get": get, "history": hist[0]} {
		for k, v := range obj {
			if _, nested := v.(map[string]any); nested && k != "origin" {
				t.Errorf("%s -o json nests %q: %v", name, k, obj)
			}
		}
		for _, k := range []string{"path", "revision", "size", "author", "time"} {
			if _, ok := obj[k]; !ok {
				t.Errorf("%s -o json has no %q: %v", name, k, obj)
			}
		}
	}
}

// A deletion, by rm or by a prefix restore, has its own history row at its
// own revision; it used to show only as a note on the version before.
func TestHistoryShowsDeletionsAtTheirRevision(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	keep := c.put("/t/hd/keep", "k")
	at := time.Now().UTC().Format(time.RFC3339Nano)
	gone := c.put("/t/hd/gone", "g")
	var plan restorePrefixView
	decode(t, c.ok("restore", "/t/hd", "--at", at, "-o", "json"), &plan)
	if len(plan.Steps) != 1 || plan.Steps[0].Path != "/t/hd/gone" || plan.Steps[0].Action != "delete" {
		t.Fatalf("restore plan = %+v", plan)
	}
	deletedAt := plan.Steps[0].NewRevision
	var rows []historyItemView
	decode(t, c.ok("history", "/t/hd/gone", "-o", "json"), &rows)
	if len(rows) != 2 || !rows[0].Deletion || rows[0].Revision != deletedAt || rows[0].Author != "root" ||
		rows[1].Deletion || rows[1].Revision != gone || !rows[1].Deleted {
		t.Fatalf("history after a restore deleted the path = %+v; want the deletion at %d, then version %d", rows, deletedAt, gone)
	}
	// --revision -1 means the last version, not the deletion.
	c.ok("restore", "/t/hd/gone", "--revision", "-1")
	if got := c.ok("get", "/t/hd/gone"); got != "g" {
		t.Fatalf("restore --revision -1 of a deleted path: %q", got)
	}
	_ = keep
}

// put --set/--set-file writes a tree in one transaction; mistakes are
// refused without writing and without echoing a value.
func TestPutTree(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret-green"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := c.ok("put", "/dba/pg", "--set", "user=green", "--set-file", "password="+pw)
	if !strings.Contains(out, "/dba/pg/password, /dba/pg/user revision ") || !strings.Contains(out, "one transaction") {
		t.Fatalf("put --set: %q", out)
	}
	if got := c.ok("get", "/dba/pg/password"); got != "s3cret-green" {
		t.Fatalf("password = %q", got)
	}
	for _, bad := range [][]string{
		{"put", "/dba/pg", "--set", "s3cret-value"},
		{"put", "/dba/pg", "--set", "user=a", "--set", "user=b"},
		{"put", "/dba/pg", "value", "--set", "user=a"},
		{"put", "/dba/pg", "--set-file", "password=/nonexistent"},
		{"put", "/dba/pg", "--set", "../x=s3cret-value"},
	} {
		msg := c.fails(bad...)
		if strings.Contains(msg, "s3cret-value") {
			t.Errorf("graft %v echoes the value: %s", bad, msg)
		}
	}
	if got := c.ok("get", "/dba/pg/user"); got != "green" {
		t.Fatalf("a refused put changed user to %q", got)
	}
}
