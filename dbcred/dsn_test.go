package dbcred

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// ScrubDSN removes the password of a DSN from a message, whole or in the
// pieces a parser may cut it into (a password with an unescaped @ or /),
// percent-decoded too, in each form a driver takes; errors.Is still sees
// through it, and an error with nothing to remove comes back as it is.
func TestScrubDSN(t *testing.T) {
	tests := []struct {
		dsn, msg string
		gone     []string
		kept     []string
	}{
		{"postgres://admin:Zq9ab@Kx7cd@127.0.0.1:5999/postgres", "lookup Kx7cd@127.0.0.1: no such host", []string{"Kx7cd"}, []string{"@127.0.0.1: no such host"}},
		{"postgres://admin:1234/Kx7cd@db:5432/postgres", "failed to connect to `user=root database=Kx7cd@db:5432/postgres`", []string{"Kx7cd"}, []string{"db:5432/postgres"}},
		{"postgres://admin:s3cr%40t-pw@db/postgres", "near s3cr@t-pw and s3cr%40t-pw", []string{"s3cr@t-pw", "s3cr%40t-pw"}, []string{"near"}},
		{"host=db user=admin password='Zq9 ab@Kx7cd' dbname=postgres", "saw Zq9 ab@Kx7cd", []string{"Zq9 ab@Kx7cd"}, []string{"saw"}},
		{"host=db user=admin password=Zq9ab dbname=postgres", "saw Zq9ab", []string{"Zq9ab"}, []string{"saw"}},
		{"admin:Zq9@tcp/Kx7cd@tcp(db:3306)/", "Unknown database 'Kx7cd@tcp(db:3306)'", []string{"Kx7cd"}, []string{"Unknown database"}},
	}
	for _, tt := range tests {
		err := ScrubDSN(fmt.Errorf("%s: %w", tt.msg, context.DeadlineExceeded), tt.dsn)
		for _, g := range tt.gone {
			if strings.Contains(err.Error(), g) {
				t.Errorf("ScrubDSN(%q) left %q in %q", tt.dsn, g, err)
			}
		}
		for _, k := range tt.kept {
			if !strings.Contains(err.Error(), k) {
				t.Errorf("ScrubDSN(%q) removed %q from %q", tt.dsn, k, err)
			}
		}
		if !errors.Is(err, context.DeadlineExceeded) || errors.Unwrap(err) != nil {
			t.Errorf("ScrubDSN(%q): errors.Is lost, or the original can be unwrapped: %#v", tt.dsn, err)
		}
	}
	clean := errors.New("dial tcp 10.0.0.1:5432: connection refused")
	if got := ScrubDSN(clean, "postgres://admin:Zq9ab@10.0.0.1/postgres"); got != clean {
		t.Errorf("an error without the password came back as %#v", got)
	}
}

// Redact removes every secret from a message, keeps errors.Is working
// through it, and hands out no unwrapped error that holds the original
// message; an error without a secret is returned as it is.
func TestRedact(t *testing.T) {
	inner := fmt.Errorf("%w: near 'hunter2-password' in %w", ErrLogin, context.DeadlineExceeded)
	err := Redact(fmt.Errorf("test login as blue: %w", inner), "hunter2-password", "", "*ABCDEF")
	if strings.Contains(err.Error(), "hunter2-password") || !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("message %q", err)
	}
	if !errors.Is(err, ErrLogin) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is lost its causes: %v", err)
	}
	if errors.Unwrap(err) != nil {
		t.Error("the redacted error unwraps to the original")
	}

	clean := errors.New("dial tcp 127.0.0.1:1: connection refused")
	if got := Redact(clean, "hunter2-password"); got != clean {
		t.Errorf("an error without a secret came back as %#v", got)
	}
}
