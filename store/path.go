package store

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Path limits. They keep keys well inside etcd's request limits and keep
// pathological trees out.
const (
	MaxPathLength   = 1024
	MaxPathDepth    = 32
	MaxSegmentBytes = 255
)

// PathError says why a path is not canonical. It wraps ErrInvalidPath. Its
// message leaves the path out because callers wrap it with "verb path: ".
type PathError struct {
	Path   string
	Reason string
}

func (e *PathError) Error() string {
	return fmt.Sprintf("invalid path: %s", e.Reason)
}

func (e *PathError) Unwrap() error { return ErrInvalidPath }

// ParsePath checks that p is a canonical key path: a leading "/",
// "/"-separated segments of [A-Za-z0-9._-], no empty, "." or ".." segments,
// no trailing "/", within the length and depth limits. The root "/" is not
// a key path; use ParsePrefix where the root is allowed.
func ParsePath(p string) (string, error) {
	if p == "/" {
		return "", &PathError{Path: p, Reason: "the root / is not a key; name a path below it, such as /app/name/key"}
	}
	return parse(p)
}

// ParsePrefix is ParsePath that also accepts the root "/".
func ParsePrefix(p string) (string, error) {
	if p == "/" {
		return p, nil
	}
	return parse(p)
}

func parse(p string) (string, error) {
	bad := func(format string, args ...any) (string, error) {
		return "", &PathError{Path: p, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case p == "":
		return bad("empty; paths start with / as in /app/name/key")
	case len(p) > MaxPathLength:
		return bad("longer than %d bytes", MaxPathLength)
	case p[0] != '/':
		return bad("must start with /")
	case p[len(p)-1] == '/':
		return bad("must not end with /")
	}
	depth := 0
	for seg := range strings.SplitSeq(p[1:], "/") {
		depth++
		switch {
		case seg == "":
			return bad("empty segment (doubled /)")
		case seg == "." || seg == "..":
			return bad("segment %q is not allowed", seg)
		case len(seg) > MaxSegmentBytes:
			return bad("segment longer than %d bytes", MaxSegmentBytes)
		}
		for i := 0; i < len(seg); i++ {
			if !segmentChar(seg[i]) {
				// Quote the whole rune so that "é" is reported as "é", not
				// as its first UTF-8 byte; an invalid byte shows as "\xff".
				_, size := utf8.DecodeRuneInString(seg[i:])
				return bad("character %q in segment %q is not allowed; use letters, digits, '.', '_' and '-'", seg[i:i+size], seg)
			}
		}
	}
	if depth > MaxPathDepth {
		return bad("deeper than %d segments", MaxPathDepth)
	}
	return p, nil
}

func segmentChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// Under reports whether path is prefix itself or lies below it, segment by
// segment: /app/foo is under /app and /app/foo, not under /app/fo. Both
// arguments must be canonical; "/" is the root and holds everything.
func Under(path, prefix string) bool {
	if prefix == "/" {
		return strings.HasPrefix(path, "/")
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}

// ShortPath is p as an error message shows it: a path too long to be one
// is cut, with its length, rather than echoed whole.
func ShortPath(p string) string {
	const keep = 64
	if len(p) <= keep+32 {
		return escapeControls(p)
	}
	return fmt.Sprintf("%s… (%d bytes)", escapeControls(strings.ToValidUTF8(p[:keep], "")), len(p))
}

// escapeControls writes the control characters and invalid bytes of s
// as Go escapes (\x1b), so that an error quoting a path a caller sent
// cannot drive the terminal or the log it is shown in. A valid path has
// none, and is returned as it is.
func escapeControls(s string) string {
	clean := utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) })
	if clean {
		return s
	}
	q := strconv.Quote(s)
	return strings.ReplaceAll(q[1:len(q)-1], `\"`, `"`)
}
