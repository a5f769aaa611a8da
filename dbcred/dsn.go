package dbcred

import (
	"errors"
	"net/url"
	"slices"
	"strings"
)

// minFragment is the shortest piece of a DSN's password ScrubDSN removes
// on its own; shorter pieces would blank out ordinary words of a message
// (the whole password and its longer pieces always go).
const minFragment = 4

// Redact replaces every secret in err's message with [redacted]. The
// result answers errors.Is for what err wraps but has no Unwrap, which
// would hand out the original message; an error without a secret is
// returned as it is.
func Redact(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	// Longest first, so a piece of a longer secret does not leave the
	// rest of it behind.
	secrets = slices.Clone(secrets)
	slices.SortStableFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

// redactedError is an error whose message had a secret removed.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string        { return e.msg }
func (e *redactedError) Is(target error) bool { return errors.Is(e.err, target) }

// ScrubDSN removes from err's message everything of dsn that is, or may
// be a piece of, its password, however a driver split it: a password
// with an unescaped @ or / is cut by the parser into a shorter password
// and a host or database name that then appear in connection errors.
// It is the rotator's last line; the drivers refuse such DSNs first.
func ScrubDSN(err error, dsn string) error {
	return Redact(err, dsnSecrets(dsn)...)
}

// dsnSecrets returns the texts of dsn that may be its password or part
// of it: in a URL or a go-sql-driver/mysql DSN, everything between the
// first ':' of the user info and the last '@' (so every reading of an
// unescaped @ or / is covered), its pieces between delimiters, and their
// percent-decoded forms; in a key=value DSN, the password's value.
func dsnSecrets(dsn string) []string {
	var regions []string
	if i := strings.Index(dsn, "password="); i >= 0 && (i == 0 || dsn[i-1] == ' ') {
		v := dsn[i+len("password="):]
		if strings.HasPrefix(v, "'") {
			v = v[1:]
			if end := strings.Index(v, "'"); end >= 0 {
				v = v[:end]
			}
		} else if end := strings.IndexAny(v, " \t\n"); end >= 0 {
			v = v[:end]
		}
		regions = append(regions, v)
	}
	rest := dsn
	if _, after, ok := strings.Cut(dsn, "://"); ok {
		rest = after
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if _, pw, ok := strings.Cut(rest[:at], ":"); ok {
			regions = append(regions, pw)
		}
	}
	var out []string
	add := func(s string) {
		out = append(out, s)
		if d, err := url.PathUnescape(s); err == nil && d != s {
			out = append(out, d)
		}
	}
	for _, r := range regions {
		if r == "" {
			continue
		}
		add(r)
		for _, piece := range strings.FieldsFunc(r, func(c rune) bool { return strings.ContainsRune("@/:?#()", c) }) {
			if len(piece) >= minFragment {
				add(piece)
			}
		}
	}
	return out
}
