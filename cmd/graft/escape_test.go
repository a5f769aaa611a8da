package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/graft-sh/graft/internal/cmdline"
	"github.com/graft-sh/graft/sdk"
)

// What agents report is shown escaped: an application must not retitle,
// clear or overwrite the terminal of whoever runs agents ls or rollout
// status (issue 18, low 7). graftd refuses such reports now; reports of
// an older graftd, and any other graftd, may still carry them.
func TestReportedTextsAreEscaped(t *testing.T) {
	const evil = "\x1b]0;owned\x07\x1b[2J\r\u009b\tx"
	var out bytes.Buffer
	a := &app{Globals: cmdline.Globals{Stdout: &out, Getenv: func(string) string { return "" }}, stderr: io.Discard, isTerminal: func(io.Writer) bool { return true }}
	r := sdk.Rollout{Revision: 7, Consumers: []sdk.Consumer{{
		Agent:  sdk.AgentReport{App: "evil", ID: "id" + evil, Host: "h" + evil, Revision: 7},
		Reads:  "/app/evil/x",
		Reason: "unhealthy: " + evil,
	}}}
	if err := a.emitRollout("/dba/x", r); err != nil {
		t.Fatal(err)
	}
	tab := newTable(&out, "APP", "HOST")
	tab.row("evil", "h"+evil)
	if err := tab.flush(); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if i := strings.IndexFunc(got, func(r rune) bool { return r != '\n' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0)) }); i >= 0 {
		t.Fatalf("a control character reached the output at byte %d:\n%q", i, got)
	}
	if !strings.Contains(got, `h\x1b]0;owned\a\x1b[2J\r\u009b\tx`) {
		t.Fatalf("the host is not shown escaped:\n%s", got)
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, ünïcode": "plain text, ünïcode",
		"a\nb":                `a\nb`,
		"\x00\x1b\x7f":        `\x00\x1b\x7f`,
		"bad\xffutf8":         `bad\xffutf8`,
		"\u009b":              `\u009b`,
		"\u2028 stays":        "\u2028 stays",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}
