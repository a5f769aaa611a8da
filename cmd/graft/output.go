package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/graft-sh/graft/sdk"
)

// table writes aligned columns, without the trailing blanks tabwriter
// leaves after empty last cells.
type table struct {
	out io.Writer
	buf bytes.Buffer
	tw  *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{out: w}
	t.tw = tabwriter.NewWriter(&t.buf, 0, 4, 2, ' ', 0)
	t.row(header...)
	return t
}

// row writes one row; a cell's control characters are escaped, so that
// neither a tab nor an escape sequence in it (an agent's host or reason)
// breaks the table or reaches the terminal.
func (t *table) row(cells ...string) {
	escaped := make([]string, len(cells))
	for i, c := range cells {
		escaped[i] = printable(c)
	}
	fmt.Fprintln(t.tw, strings.Join(escaped, "\t"))
}

// printable escapes s's control characters (and invalid UTF-8) as Go
// escapes, \x1b, \n, \u009b: what other principals chose to report is
// shown, never interpreted by the terminal.
func printable(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || r == utf8.RuneError }) {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError:
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				fmt.Fprintf(&b, "\\x%02x", s[i])
				continue
			}
			b.WriteRune(r)
		case unicode.IsControl(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	for line := range strings.Lines(t.buf.String()) {
		if _, err := io.WriteString(t.out, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// entryView is an entry as -o json and -o yaml show it.
type entryView struct {
	Path string `json:"path"`
	// Value is set when the value is valid UTF-8, ValueBase64 otherwise;
	// neither where values are not shown.
	Value       *string     `json:"value,omitempty"`
	ValueBase64 *string     `json:"value_base64,omitempty"`
	Revision    int64       `json:"revision"`
	Size        int64       `json:"size"`
	Author      string      `json:"author"`
	Time        string      `json:"time,omitempty"`
	Origin      *originView `json:"origin,omitempty"`
}

type originView struct {
	Kind           string `json:"kind"`
	RuleID         string `json:"rule_id,omitempty"`
	SourcePath     string `json:"source_path,omitempty"`
	SourceRevision int64  `json:"source_revision,omitempty"`
	SourceTime     string `json:"source_time,omitempty"`
}

func viewEntry(e *sdk.Entry, withValue bool) entryView {
	v := entryView{
		Path:     e.Path,
		Revision: e.Revision,
		Size:     e.Size,
		Author:   e.Author,
		Time:     jsonTime(e.Time),
	}
	if withValue {
		v.Value, v.ValueBase64 = viewValue(e.Value)
	}
	if o := e.Origin; o != nil {
		v.Origin = &originView{Kind: o.Kind, RuleID: o.RuleID, SourcePath: o.SourcePath, SourceRevision: o.SourceRevision, SourceTime: jsonTime(o.SourceTime)}
	}
	return v
}

// viewValue shows a value as text when it is UTF-8, else as base64.
func viewValue(b []byte) (text, b64 *string) {
	if utf8.Valid(b) {
		s := string(b)
		return &s, nil
	}
	s := base64.StdEncoding.EncodeToString(b)
	return nil, &s
}

// jsonTime keeps nanoseconds, so a time copied from -o json into
// `graft restore --at` means exactly that version.
func jsonTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// tableTime is a time in a table column; "-" when unset.
func tableTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// rev is a revision in a table column; "-" for none.
func rev(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}
