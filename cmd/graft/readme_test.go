package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/graftdtest"
)

// readmeBlocks returns the ```sh blocks (each a list of lines) of the
// README's section under heading, up to the next heading.
func readmeBlocks(t *testing.T, heading string) [][]string {
	t.Helper()
	text := readme(t)
	i := strings.Index(text, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no heading %q", heading)
	}
	text = text[i+len(heading)+2:]
	if next := regexp.MustCompile(`(?m)^#{1,6} `).FindStringIndex(text); next != nil {
		text = text[:next[0]]
	}
	var blocks [][]string
	for {
		start := strings.Index(text, "```sh\n")
		if start < 0 {
			break
		}
		text = text[start+6:]
		end := strings.Index(text, "```")
		if end < 0 {
			t.Fatalf("an unclosed sh block under %q", heading)
		}
		blocks = append(blocks, strings.Split(strings.TrimRight(text[:end], "\n"), "\n"))
		text = text[end+3:]
	}
	if len(blocks) == 0 {
		t.Fatalf("no sh block under %q", heading)
	}
	return blocks
}

func readme(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// tourCommand is one shell command of the README: a line, or several
// (a here-document, a line continued with \).
type tourCommand struct {
	text    string
	section string
	// fails says the README expects it to fail: its comment says
	// "refused…" or "… exits 3 …".
	fails bool
}

var exitLine = regexp.MustCompile(`^__exit (\d+) (\d+)$`)

var heredoc = regexp.MustCompile(`<<-?'?([A-Za-z_]+)'?`)

// tourCommands splits a block into commands; comment lines go.
func tourCommands(section string, lines []string) []tourCommand {
	var out []tourCommand
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if trimmed := strings.TrimSpace(line); trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		first := line
		text := line
		if m := heredoc.FindStringSubmatch(line); m != nil {
			for i++; i < len(lines); i++ {
				text += "\n" + lines[i]
				if strings.TrimSpace(lines[i]) == m[1] {
					break
				}
			}
		}
		for strings.HasSuffix(text, "\\") && i+1 < len(lines) {
			i++
			text += "\n" + lines[i]
		}
		_, comment, _ := strings.Cut(first, " # ")
		out = append(out, tourCommand{text: text, section: section, fails: strings.HasPrefix(comment, "refused") || strings.Contains(comment, "exits 3")})
	}
	return out
}

// tourSections are the README's sections the tour test runs, in order:
// every one that needs no PostgreSQL, MariaDB or Docker.
var tourSections = []string{
	"## A 60-second tour",
	"## Who may do what",
	"## Replication: share a value, and every application that uses it gets it",
	"## graft-agent: the application picks the new value up",
}

// The README works as written on a fresh store, top to bottom, section
// after section, in one shell in a scratch directory, with the binaries
// a reader builds: every command succeeds except the ones it says are
// refused. (It used to restore the prefix to a fixed date before the
// reader's own writes, name revisions a fresh store does not have, share
// in the agent section what the replication section had shared, and
// fan out a prefix that held nothing.) What it leaves in its directory
// is ignored by .gitignore, should a reader run it in the repository.
func TestReadmeTourRunsTopToBottom(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	if !strings.Contains(readme(t), "\ncd $(mktemp -d) ") {
		t.Error("the README's tour does not start in a scratch directory")
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(os.PathSeparator), ".", "../graft-agent", "../graft-bench")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	g := graftdtest.Start(t)
	demo := t.TempDir() // the README's /tmp/graft-demo, one per test run
	var cmds []tourCommand
	for _, heading := range tourSections {
		for _, block := range readmeBlocks(t, heading) {
			cmds = append(cmds, tourCommands(heading, block)...)
		}
	}
	var script strings.Builder
	for n, c := range cmds {
		cmd := strings.NewReplacer("/tmp/graft-demo", demo, "127.0.0.1:7420", g.Addr).Replace(c.text)
		switch {
		case strings.HasPrefix(cmd, "graft watch"):
			cmd = "timeout 2 " + cmd + "\n[ $? = 124 ]" // it follows for ever
		case strings.HasPrefix(cmd, "graft-bench replicate"):
			cmd = strings.Replace(cmd, "--duration 5s --rate 500", "--duration 500ms --rate 20", 1) // a figure, not a load test
		}
		// The marker starts a line of its own even after output that ends
		// without a newline.
		fmt.Fprintf(&script, "%s\nprintf '\\n__exit %%s %d\\n' $?\n", cmd, n)
	}
	script.WriteString("kill $(jobs -p) 2>/dev/null\nwait\n")
	dir := t.TempDir()
	run := exec.Command("bash", "-c", script.String())
	run.Dir = dir
	run.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"GRAFT_ADDR="+g.Addr, "GRAFT_TOKEN="+g.Token,
		"GRAFT_AGENT_LISTEN=off") // no HTTP port to collide with other tests'
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	run.WaitDelay = 10 * time.Second // a background agent left running holds the output open
	t.Cleanup(func() {
		if run.Process != nil {
			syscall.Kill(-run.Process.Pid, syscall.SIGKILL)
		}
	})
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	seen := 0
	var shown strings.Builder
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		m := exitLine.FindStringSubmatch(sc.Text())
		if m == nil {
			shown.WriteString("    " + sc.Text() + "\n")
			continue
		}
		var code, n int
		fmt.Sscan(m[1], &code)
		fmt.Sscan(m[2], &n)
		seen++
		if ok := code == 0; ok == cmds[n].fails {
			t.Errorf("%s, command %d exited %d (want success: %v):\n  %s\n%s", cmds[n].section, n+1, code, !cmds[n].fails, cmds[n].text, shown.String())
		}
		shown.Reset()
	}
	if seen != len(cmds) {
		t.Fatalf("ran %d of %d tour commands:\n%s", seen, len(cmds), out)
	}

	// And it leaves what it says.
	c := newCLI(t, g)
	for path, want := range map[string]string{
		"/dba/passpack/services/message-processor/mongo/password": "r0tated", // the agent section's
		"/app/message-processor/replicated/mongo/password":        "r0tated",
		"/dba/passpack/services/message-processor/redis/user":     "mp-cache",
		"/app/billing/replicated/datadog/api-key":                 "dd-4p1-k3y",
		"/app/message-processor/replicated/datadog/api-key":       "dd-4p1-k3y",
	} {
		if got := c.ok("get", path); got != want {
			t.Errorf("%s after the tour = %q, want %q", path, got, want)
		}
	}
	for _, gone := range []string{"/dba/passpack/services/message-processor/mongo/port", "/dba/passpack/services/message-processor/mongo/user", "/app/a/replicated/dd"} {
		if r := c.run("get", gone); r.code != 1 || !strings.Contains(r.stderr, "not found") {
			t.Errorf("%s after the tour: %+v, want not found (restored away, removed, unshared)", gone, r)
		}
	}
	if data, err := os.ReadFile(filepath.Join(demo, "db.env")); err != nil || string(data) != "DB_PASSWORD=r0tated\n" {
		t.Errorf("the agent's file after the tour: %q, %v", data, err)
	}
	if _, err := exec.LookPath("git"); err == nil {
		left, _ := os.ReadDir(dir)
		for _, e := range left {
			name := e.Name()
			if e.IsDir() {
				name += "/"
			}
			if exec.Command("git", "-C", "../..", "check-ignore", "-q", "--no-index", name).Run() != nil {
				t.Errorf("the tour leaves %s, which .gitignore does not cover in the repository's root", name)
			}
		}
	}
}

// make help, which the README points to, lines its descriptions up in one
// column (names longer than ten characters, cluster-down and bench-agents,
// pushed theirs out of it).
func TestMakeHelpAligns(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	out, err := exec.Command("make", "-s", "-C", "../..", "help").Output()
	if err != nil {
		t.Fatalf("make help: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	column := -1
	for _, l := range lines {
		name := strings.Fields(l)[0]
		rest := strings.TrimLeft(l[strings.Index(l, name)+len(name):], " ")
		col := len(l) - len(rest)
		if column < 0 {
			column = col
		}
		if col != column || !strings.HasPrefix(l, "  "+name+" ") {
			t.Errorf("make help: %q starts its description at column %d, the first line at %d:\n%s", name, col, column, out)
		}
	}
	if len(lines) < 10 {
		t.Fatalf("make help listed %d targets:\n%s", len(lines), out)
	}
}

// The README's Go SDK snippet is sdk's Example_readme, which runs against
// a graftd: every line of the snippet is a line of that example, in
// order (a "{ ... }" stands for the loop's body). So the snippet's shape
// works: it once gave one path's revision as another's IfRevision.
func TestReadmeSDKSnippetIsAnExample(t *testing.T) {
	text := readme(t)
	i := strings.Index(text, "\n## The Go SDK\n")
	if i < 0 {
		t.Fatal("README has no Go SDK section")
	}
	text = text[i:]
	start := strings.Index(text, "```go\n")
	end := strings.Index(text[start+6:], "```")
	if start < 0 || end < 0 {
		t.Fatal("no go block in the Go SDK section")
	}
	snippet := strings.Split(strings.TrimSpace(text[start+6:start+6+end]), "\n")
	data, err := os.ReadFile("../../sdk/example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	src := string(data)
	i = strings.Index(src, "\nfunc Example_readme() {\n")
	if i < 0 {
		t.Fatal("sdk/example_test.go has no Example_readme")
	}
	body := strings.Split(src[i:i+strings.Index(src[i:], "\n}\n")], "\n")
	code := func(line string) string {
		line, _, _ = strings.Cut(line, " // ")
		line = strings.TrimSpace(line)
		if loop, ok := strings.CutSuffix(line, "{ ... }"); ok {
			line = strings.TrimSpace(loop) + " {"
		}
		return line
	}
	at := 0
	for _, want := range snippet {
		want = code(want)
		for at < len(body) && code(body[at]) != want {
			at++
		}
		if at == len(body) {
			t.Fatalf("the README's SDK line %q is not in sdk.Example_readme (in this order)", want)
		}
	}
}

// The README lists every field of the JSON that get, ls and history
// print (history's deletion was missing).
func TestReadmeListsTheJSONFields(t *testing.T) {
	text := readme(t)
	i := strings.Index(text, "The JSON of `get`, `ls` and `history`")
	if i < 0 {
		t.Fatal("the README no longer describes the JSON of get, ls and history")
	}
	paragraph, _, _ := strings.Cut(text[i:], "\n\n")
	for _, v := range []any{entryView{}, listItemView{}, historyItemView{}} {
		for _, f := range reflect.VisibleFields(reflect.TypeOf(v)) {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && !strings.Contains(paragraph, "`"+name+"`") {
				t.Errorf("the README's paragraph on the JSON does not list %s's field %s:\n%s", reflect.TypeOf(v).Name(), name, paragraph)
			}
		}
	}
}
