// Package dbcred manages the database users graft rotates blue/green. A
// group role holds the grants and owns what its members create; two users
// that log in as members of it take turns: one is active, the other is
// re-keyed, tested, published, and the old one retired once every
// consumer runs the new one. One package per database implements Driver
// (dbcred/postgres, dbcred/mysql); the rotator in graft-agent drives them,
// and graftd's dynamic credentials will too.
//
// No error, log line or message of a driver holds a password or a DSN
// with one.
package dbcred

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
)

// Driver manages the users of one database server through an admin
// connection. Every method is idempotent, so a rotation that crashed can
// repeat the step it was in.
type Driver interface {
	// EnsureGroup creates group if it does not exist: a role that cannot
	// log in, which holds the grants the users share.
	EnsureGroup(ctx context.Context, group string) error
	// SetPassword creates user if it does not exist, as a member of group
	// acting with its privileges (what it creates belongs to group, where
	// the database has owners), sets its password and lets it log in.
	SetPassword(ctx context.Context, user, group, password string) error
	// Test logs in as user with password, at the address of the admin
	// connection, and checks that the session acts with group's
	// privileges.
	Test(ctx context.Context, user, group, password string) error
	// Retire stops user from logging in and ends its open sessions. A
	// user that does not exist is retired already.
	Retire(ctx context.Context, user string) error
	// Sessions is the number of sessions user has open.
	Sessions(ctx context.Context, user string) (int, error)
	// Close closes the admin connection.
	Close() error
}

// ErrLogin says a Test login was refused, or the session lacked the
// group's privileges.
var ErrLogin = errors.New("login test failed")

// Policy is how passwords are made.
type Policy struct {
	// Length is the number of characters (default 32, at least 16).
	Length int
	// Alphabet is the characters drawn from (default letters and digits,
	// which need no quoting in a DSN, an env file or a shell).
	Alphabet string
}

// DefaultAlphabet is Policy's default alphabet.
const DefaultAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// Password returns a new random password under p, drawn uniformly with
// crypto/rand.
func (p Policy) Password() (string, error) {
	n, alphabet := p.Length, p.Alphabet
	if n == 0 {
		n = 32
	}
	if alphabet == "" {
		alphabet = DefaultAlphabet
	}
	switch {
	case n < 16 || n > 1024:
		return "", fmt.Errorf("password policy: length %d: want 16 to 1024 characters", n)
	case len(alphabet) < 10:
		return "", fmt.Errorf("password policy: an alphabet of %d characters is too small: want at least 10", len(alphabet))
	}
	max := big.NewInt(int64(len(alphabet)))
	out := make([]byte, n)
	for i := range out {
		k, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", fmt.Errorf("password policy: %w", err)
		}
		out[i] = alphabet[k.Int64()]
	}
	return string(out), nil
}
