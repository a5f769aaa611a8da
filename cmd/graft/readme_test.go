package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/graft-sh/graft/internal/graftdtest"
)

// readmeBlock returns the lines of the first ```sh block after heading in
// the README.
func readmeBlock(t *testing.T, heading string) []string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i := strings.Index(text, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no heading %q", heading)
	}
	text = text[i:]
	start := strings.Index(text, "```sh\n")
	end := strings.Index(text[start+6:], "```")
	if start < 0 || end < 0 {
		t.Fatalf("no sh block after %q", heading)
	}
	return strings.Split(strings.TrimSpace(text[start+6:start+6+end]), "\n")
}

var exitLine = regexp.MustCompile(`^__exit (\d+) (\d+)$`)

// The tour works as written on a fresh store, top to bottom, with the
// graft binary a reader builds: every command succeeds except the ones it
// says are refused. (It used to restore the prefix to a fixed date before
// the reader's own writes, and name revisions a fresh store does not have.)
func TestReadmeTourRunsTopToBottom(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	bin := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "graft"), ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	g := graftdtest.Start(t)
	lines := readmeBlock(t, "## A 60-second tour")
	var script strings.Builder
	var want []bool // per command: must it succeed?
	for _, line := range lines {
		if strings.TrimSpace(line) == "" {
			continue
		}
		cmd := line
		if strings.HasPrefix(cmd, "graft watch") {
			cmd = "timeout 2 " + cmd + "\n[ $? = 124 ]" // it follows for ever
		}
		// The marker starts a line of its own even after output that ends
		// without a newline.
		fmt.Fprintf(&script, "%s\nprintf '\\n__exit %%s %d\\n' $?\n", cmd, len(want))
		want = append(want, !strings.Contains(line, "# refused"))
	}
	run := exec.Command("bash", "-c", script.String())
	run.Dir = t.TempDir()
	run.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "GRAFT_ADDR="+g.Addr, "GRAFT_TOKEN="+g.Token)
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
		if ok := code == 0; ok != want[n] {
			t.Errorf("tour command %d exited %d (want success: %v):\n  %s\n%s", n+1, code, want[n], nonEmpty(lines)[n], shown.String())
		}
		shown.Reset()
	}
	if seen != len(want) {
		t.Fatalf("ran %d of %d tour commands:\n%s", seen, len(want), out)
	}
	// And it leaves what it says: the compare-and-swap's value, no port
	// (restored away), no user (removed).
	c := newCLI(t, g)
	if got := c.ok("get", "/dba/passpack/services/message-processor/mongo/password"); got != "x2" {
		t.Errorf("password after the tour = %q, want x2", got)
	}
	for _, gone := range []string{"port", "user"} {
		if r := c.run("get", "/dba/passpack/services/message-processor/mongo/"+gone); r.code != 1 || !strings.Contains(r.stderr, "not found") {
			t.Errorf("%s after the tour: %+v, want not found", gone, r)
		}
	}
}

func nonEmpty(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
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
