package dbcred_test

import (
	"strings"
	"testing"

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
