package dbcred_test

import (
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/dbcred"
)

// Passwords follow the policy, differ every time, and bad policies are
// refused saying what to use.
func TestPolicyPassword(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		pw, err := dbcred.Policy{}.Password()
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != 32 || strings.Trim(pw, dbcred.DefaultAlphabet) != "" || seen[pw] {
			t.Fatalf("password %q: want 32 new characters of the default alphabet", pw)
		}
		seen[pw] = true
	}
	pw, err := dbcred.Policy{Length: 20, Alphabet: "abcdefghij"}.Password()
	if err != nil || len(pw) != 20 || strings.Trim(pw, "abcdefghij") != "" {
		t.Fatalf("custom policy: %q, %v", pw, err)
	}
	for _, bad := range []dbcred.Policy{{Length: 8}, {Length: 2000}, {Alphabet: "ab"}} {
		if _, err := bad.Password(); err == nil || !strings.Contains(err.Error(), "want") {
			t.Errorf("policy %+v: %v", bad, err)
		}
	}
}

// {{expiration}} is rounded up to the second: the database never
// refuses a user before its lease ends, and a whole second stays as it is.
func TestExpirationRoundsUp(t *testing.T) {
	for _, c := range []struct {
		in   time.Time
		want string
	}{
		{time.Date(2026, 12, 7, 18, 29, 16, 980_000_000, time.UTC), "2026-12-07 18:29:17+00"},
		{time.Date(2026, 12, 7, 18, 29, 16, 1, time.UTC), "2026-12-07 18:29:17+00"},
		{time.Date(2026, 12, 7, 18, 29, 16, 0, time.UTC), "2026-12-07 18:29:16+00"},
		{time.Date(2026, 12, 7, 19, 29, 59, 500_000_000, time.FixedZone("x", 3600)), "2026-12-07 18:30:00+00"},
	} {
		if got := dbcred.ExpirationText(c.in); got != c.want {
			t.Errorf("ExpirationText(%s) = %s, want %s", c.in, got, c.want)
		}
		if got := dbcred.Expand("VALID UNTIL '{{expiration}}'", "n", "p", c.in); got != "VALID UNTIL '"+c.want+"'" {
			t.Errorf("Expand: %s", got)
		}
	}
}
