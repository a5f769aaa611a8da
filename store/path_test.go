package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/graft-sh/graft/store"
)

func TestParsePath(t *testing.T) {
	// longest is exactly MaxPathLength bytes: 4 segments of 255 bytes and
	// one of 0..: "/" + 255 = 256 per segment, 4*256 = 1024.
	longest := strings.Repeat("/"+strings.Repeat("a", store.MaxSegmentBytes), 4)
	deepest := strings.Repeat("/a", store.MaxPathDepth)

	valid := []string{
		"/a",
		"/app/name/key",
		"/A-z_0.9",
		"/app/.hidden",
		"/app/...",
		"/app/a..b",
		"/app/-",
		"/" + strings.Repeat("x", store.MaxSegmentBytes),
		longest,
		deepest,
	}
	for _, p := range valid {
		t.Run("valid "+short(p), func(t *testing.T) {
			got, err := store.ParsePath(p)
			if err != nil {
				t.Fatalf("ParsePath(%q) = %v, want nil", p, err)
			}
			if got != p {
				t.Errorf("ParsePath(%q) = %q, want it unchanged", p, got)
			}
			if got, err := store.ParsePrefix(p); err != nil || got != p {
				t.Errorf("ParsePrefix(%q) = %q, %v; want %q, nil", p, got, err, p)
			}
		})
	}
	if len(longest) != store.MaxPathLength {
		t.Fatalf("test setup: longest is %d bytes, want %d", len(longest), store.MaxPathLength)
	}

	invalid := []struct {
		name, path, reason string
	}{
		{"empty", "", "empty"},
		{"root is not a key", "/", "root / is not a key"},
		{"no leading slash", "app/x", "must start with /"},
		{"trailing slash", "/app/", "must not end with /"},
		{"double slash only", "//", "must not end with /"},
		{"doubled slash", "/app//x", "empty segment"},
		{"leading doubled slash", "//app", "empty segment"},
		{"dot dot", "/app/../x", `segment ".." is not allowed`},
		{"dot dot last", "/app/..", `segment ".." is not allowed`},
		{"dot", "/app/./x", `segment "." is not allowed`},
		{"space", "/app/a b", `character " "`},
		{"percent encoded slash", "/app/a%2Fb", `character "%"`},
		{"unicode", "/app/caf\u00e9", `character "é"`},
		{"nul", "/app/a\x00", `character "\x00"`},
		{"invalid utf-8", "/app/a\xff", `character "\xff"`},
		{"star", "/app/*", `character "*"`},
		{"backslash", `/app\x`, `character "\\"`},
		{"too long", longest + "/b", "longer than 1024 bytes"},
		{"too deep", deepest + "/a", "deeper than 32 segments"},
		{"overlong segment", "/app/" + strings.Repeat("s", store.MaxSegmentBytes+1), "segment longer than 255 bytes"},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			got, err := store.ParsePath(tc.path)
			if err == nil {
				t.Fatalf("ParsePath(%q) = %q, nil; want an error", tc.path, got)
			}
			if !errors.Is(err, store.ErrInvalidPath) {
				t.Errorf("ParsePath(%q) error %v does not wrap ErrInvalidPath", tc.path, err)
			}
			var pe *store.PathError
			if !errors.As(err, &pe) {
				t.Fatalf("ParsePath(%q) error %T is not a *PathError", tc.path, err)
			}
			if pe.Path != tc.path {
				t.Errorf("PathError.Path = %q, want %q", pe.Path, tc.path)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("ParsePath(%q) error %q does not name the reason %q", tc.path, err, tc.reason)
			}
			if tc.path == "/" {
				return
			}
			if _, err := store.ParsePrefix(tc.path); !errors.Is(err, store.ErrInvalidPath) {
				t.Errorf("ParsePrefix(%q) = %v, want ErrInvalidPath", tc.path, err)
			}
		})
	}
}

func TestParsePrefixRoot(t *testing.T) {
	got, err := store.ParsePrefix("/")
	if err != nil || got != "/" {
		t.Fatalf(`ParsePrefix("/") = %q, %v; want "/", nil`, got, err)
	}
}

func TestUnder(t *testing.T) {
	tests := []struct {
		path, prefix string
		want         bool
	}{
		{"/app/foo", "/app/foo", true},
		{"/app/foo", "/app", true},
		{"/app/foo/bar", "/app/foo", true},
		{"/app/foo", "/app/fo", false},
		{"/app/foo-evil", "/app/foo", false},
		{"/app/foo-evil/x", "/app/foo", false},
		{"/app/foo.bak", "/app/foo", false},
		{"/app/foo0", "/app/foo", false},
		{"/app", "/app/foo", false},
		{"/apple", "/app", false},
		{"/x", "/", true},
		{"/app/foo/bar", "/", true},
		{"/", "/", true},
		{"/", "/app", false},
	}
	for _, tc := range tests {
		if got := store.Under(tc.path, tc.prefix); got != tc.want {
			t.Errorf("Under(%q, %q) = %v, want %v", tc.path, tc.prefix, got, tc.want)
		}
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"/", "", "/a", "/app/name/key", "/app/../x", "/app//x", "/app/", "app",
		"/a b", "/a%2Fb", "/caf\u00e9", "/a\x00", "/*", "/.", "/..", "/...", "/a/.b",
		strings.Repeat("/a", store.MaxPathDepth+1), "/" + strings.Repeat("a", store.MaxSegmentBytes+1),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := store.ParsePath(p)
		if err != nil {
			if !errors.Is(err, store.ErrInvalidPath) {
				t.Fatalf("ParsePath(%q) error %v does not wrap ErrInvalidPath", p, err)
			}
			if pre, perr := store.ParsePrefix(p); perr == nil && p != "/" {
				t.Fatalf("ParsePrefix(%q) = %q accepted what ParsePath rejected", p, pre)
			}
			return
		}
		if got != p {
			t.Fatalf("ParsePath(%q) = %q, want it unchanged", p, got)
		}
		if again, err := store.ParsePath(got); err != nil || again != got {
			t.Fatalf("re-parsing %q = %q, %v", got, again, err)
		}
		if len(p) > store.MaxPathLength {
			t.Fatalf("accepted %d bytes, over the limit %d", len(p), store.MaxPathLength)
		}
		if !strings.HasPrefix(p, "/") {
			t.Fatalf("accepted %q without a leading /", p)
		}
		segs := strings.Split(p[1:], "/")
		if len(segs) > store.MaxPathDepth {
			t.Fatalf("accepted %q with %d segments", p, len(segs))
		}
		for _, seg := range segs {
			if seg == "" || seg == "." || seg == ".." || len(seg) > store.MaxSegmentBytes {
				t.Fatalf("accepted %q with segment %q", p, seg)
			}
			for _, c := range []byte(seg) {
				if !allowed(c) {
					t.Fatalf("accepted %q with character %q", p, c)
				}
			}
		}
	})
}

func FuzzUnder(f *testing.F) {
	for _, s := range [][2]string{
		{"/app/foo", "/app/foo"}, {"/app/foo", "/app/fo"}, {"/app/foo-evil", "/app/foo"},
		{"/app/foo/x", "/app/foo"}, {"/x", "/"}, {"/", "/"}, {"/app", "/app/foo"}, {"/a.b/c", "/a"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, path, prefix string) {
		if _, err := store.ParsePrefix(path); err != nil {
			return
		}
		if _, err := store.ParsePrefix(prefix); err != nil {
			return
		}
		if got, want := store.Under(path, prefix), underBySegments(path, prefix); got != want {
			t.Fatalf("Under(%q, %q) = %v, want %v", path, prefix, got, want)
		}
	})
}

// underBySegments is the obvious, slow definition of Under.
func underBySegments(path, prefix string) bool {
	p, q := segments(path), segments(prefix)
	if len(q) > len(p) {
		return false
	}
	for i := range q {
		if p[i] != q[i] {
			return false
		}
	}
	return true
}

func segments(p string) []string {
	if p == "/" {
		return nil
	}
	return strings.Split(p[1:], "/")
}

func allowed(c byte) bool {
	return strings.IndexByte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", c) >= 0
}

func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
