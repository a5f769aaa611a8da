package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// listener is what the protocols' listeners share: the accept loop, the
// client connections in flight (closed when it stops), and the count of
// open sessions by the database user they logged in as.
type listener struct {
	name            string
	onSessionsEnded func(user string)

	mu       sync.Mutex
	conns    map[net.Conn]struct{} // nil once stopping
	sessions map[string]int
}

func newListener(name string, onSessionsEnded func(string)) *listener {
	return &listener{name: name, onSessionsEnded: onSessionsEnded, conns: map[net.Conn]struct{}{}, sessions: map[string]int{}}
}

// Sessions returns how many sessions are open, by the database user
// they logged in as.
func (l *listener) Sessions() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int, len(l.sessions))
	for u, n := range l.sessions {
		out[u] = n
	}
	return out
}

// session counts a session of user in (+1) or out (-1), and says when a
// user's last one ended.
func (l *listener) session(user string, delta int) {
	l.mu.Lock()
	l.sessions[user] += delta
	ended := l.sessions[user] <= 0
	if ended {
		delete(l.sessions, user)
	}
	l.mu.Unlock()
	if ended && delta < 0 && l.onSessionsEnded != nil {
		l.onSessionsEnded(user)
	}
}

// accept serves each connection of ln with handle until ctx ends, then
// closes ln and the connections in flight and waits for their handlers.
func (l *listener) accept(ctx context.Context, ln net.Listener, handle func(context.Context, net.Conn)) error {
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		l.mu.Lock()
		for c := range l.conns {
			c.Close()
		}
		l.conns = nil
		l.mu.Unlock()
	})
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("broker %s: accept: %w", l.name, err)
		}
		if !l.track(c, true) {
			c.Close()
			continue
		}
		wg.Go(func() {
			defer l.track(c, false)
			defer c.Close()
			handle(ctx, c)
		})
	}
}

// track adds or removes a client connection; it refuses one once the
// listener is stopping.
func (l *listener) track(c net.Conn, add bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !add {
		if l.conns != nil {
			delete(l.conns, c)
		}
		return true
	}
	if l.conns == nil {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

// backendConfig is what both protocols' configurations say of the
// database and the credential.
type backendConfig struct {
	protocol    string
	backend     string
	tlsMode     string
	tls         *tls.Config
	credentials Credentials
}

// check reports what is wrong with c, and returns the TLS configuration
// to use (none with TLSDisable).
func (c backendConfig) check() (*tls.Config, error) {
	if c.backend == "" {
		return nil, fmt.Errorf("broker: %s: backend address is required (host:port)", c.protocol)
	}
	if _, _, err := net.SplitHostPort(c.backend); err != nil {
		return nil, fmt.Errorf("broker: %s: backend address %q: want host:port", c.protocol, c.backend)
	}
	if c.credentials == nil {
		return nil, fmt.Errorf("broker: %s: credentials are required", c.protocol)
	}
	switch c.tlsMode {
	case TLSDisable:
		return nil, nil
	case TLSRequire, TLSVerifyCA, TLSVerifyFull:
		if c.tls == nil {
			return nil, fmt.Errorf("broker: %s: tls mode %s needs a TLS configuration", c.protocol, c.tlsMode)
		}
		return c.tls, nil
	}
	return nil, fmt.Errorf("broker: %s: tls mode %q: want disable, require, verify-ca or verify-full", c.protocol, c.tlsMode)
}

// defaults fills in a listener's logger, connect timeout and name.
func defaults(log **slog.Logger, timeout *time.Duration, name *string, protocol string) {
	if *log == nil {
		*log = slog.Default()
	}
	if *timeout <= 0 {
		*timeout = 10 * time.Second
	}
	if *name == "" {
		*name = protocol
	}
}
