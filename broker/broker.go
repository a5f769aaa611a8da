// Package broker is graft-agent's credential broker: the application
// connects to a local listener with no password, and the broker opens the
// real connection to the database with the current credential from the
// application's tree, then relays the session. A rotation, or a dynamic
// credential replaced, takes effect on the next connection without the
// application reloading.
//
// This package speaks the PostgreSQL wire protocol (postgres.go), with
// pgx's pgproto3 for the messages and pgconn to log in to the backend
// (TLS by mode, SCRAM-SHA-256 with channel binding, MD5, cleartext), and
// the MySQL/MariaDB one (mysql.go), its handshake packets written here
// (TLS by mode, mysql_native_password, caching_sha2_password).
package broker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
)

// Credential is a database user and password taken together from one
// revision of the application's tree, so that a connection never pairs
// one credential's user with another's password.
type Credential struct {
	User     string
	Password string
	// Revision is the store revision they were read at (0 for a dynamic
	// credential, which has a lease instead).
	Revision int64
	// Source says where they come from, for errors: the paths in the
	// application's tree, or the role a dynamic credential is issued from.
	Source string
}

// Credentials gives the broker the credential to log in with. It is
// called once per connection and must not block on the network: the
// agent serves it from memory.
type Credentials interface {
	Current(ctx context.Context) (Credential, error)
}

// CredentialsFunc adapts a function to Credentials.
type CredentialsFunc func(ctx context.Context) (Credential, error)

// Current implements Credentials.
func (f CredentialsFunc) Current(ctx context.Context) (Credential, error) { return f(ctx) }

// ErrNoCredential says the application's tree does not hold the
// credential (yet).
var ErrNoCredential = errors.New("no credential")

// cancelKey is the broker's own BackendKeyData given to a client.
type cancelKey struct {
	pid    uint32
	secret uint32
}

// cancels maps the keys the broker gave its clients to the sessions they
// cancel.
type cancels[T any] struct {
	mu sync.Mutex
	m  map[cancelKey]T
}

// add registers target under a new random key and returns the key.
func (c *cancels[T]) add(target T) cancelKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[cancelKey]T{}
	}
	for {
		var b [8]byte
		rand.Read(b[:])
		k := cancelKey{pid: binary.BigEndian.Uint32(b[:4]) & 0x7fffffff, secret: binary.BigEndian.Uint32(b[4:])}
		if _, taken := c.m[k]; !taken && k.pid != 0 {
			c.m[k] = target
			return k
		}
	}
}

func (c *cancels[T]) remove(k cancelKey) {
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

func (c *cancels[T]) get(k cancelKey) (T, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.m[k]
	return t, ok
}

// redact removes a password from s: the broker's errors quote the
// database's and the network's, which should never hold it, but a
// message that did would reach the client and the log.
func redact(s, password string) string {
	if password == "" {
		return s
	}
	return strings.ReplaceAll(s, password, "<password>")
}
