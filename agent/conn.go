package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/graft-sh/graft/sdk"
)

// connConfig configures the agent's connection to graftd.
type connConfig struct {
	SDK       sdk.Config // the connection, without the token
	TokenFile string     // read for the token; read again when graftd refuses it
	App       string     // for the message that says which token to create
	Log       *slog.Logger
}

// connection owns the agent's one client of graftd and the token it uses,
// and hands out the current client. The watch loop and the rotator run
// in goroutines of their own and both reconnect when graftd refuses the
// token, so neither keeps a client: each call takes the current one
// (call, or hold for a stream). A client replaced by a new token is
// closed once the calls that hold it are done, never under them.
type connection struct {
	cfg connConfig

	mu     sync.Mutex
	cur    *heldClient
	token  string
	warned string // the refused token last warned about, to warn once
	closed bool
}

// heldClient is one client and the calls using it.
type heldClient struct {
	client *sdk.Client
	users  int
	// replaced is closed when a newer client takes this one's place.
	replaced chan struct{}
	retired  bool
}

// newConnection connects (lazily) with the token in the token file, if
// the configuration has one.
func newConnection(ctx context.Context, cfg connConfig) (*connection, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &connection{cfg: cfg}
	client, token, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.cur, c.token = &heldClient{client: client, replaced: make(chan struct{})}, token
	return c, nil
}

// dial connects with the token in the token file, if there is one, and
// returns the client and the token.
func (c *connection) dial(ctx context.Context) (*sdk.Client, string, error) {
	sc := c.cfg.SDK
	if c.cfg.TokenFile != "" {
		data, err := os.ReadFile(c.cfg.TokenFile)
		if err != nil {
			return nil, "", fmt.Errorf("token_file: %w", err)
		}
		sc.Token = strings.TrimSpace(string(data))
		if sc.Token == "" {
			return nil, "", fmt.Errorf("token_file %s is empty: put the token from `graft token create --principal app:%s` in it", c.cfg.TokenFile, c.cfg.App)
		}
	}
	client, err := sdk.New(ctx, sc)
	return client, sc.Token, err
}

// close closes the current client when its last call is done; calls
// after it fail. The agent closes its connection only once all its parts
// have stopped, so that a stopping rotator can still give its claims up
// (the connection is not a task of its own for that reason: it has no
// work of its own between refusals, and must outlive the tasks).
func (c *connection) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	c.retire(c.cur)
}

// retire closes h once no call uses it. c.mu is held.
func (c *connection) retire(h *heldClient) {
	h.retired = true
	if h.users == 0 {
		h.client.Close()
	}
}

// hold takes the current client for a call or a stream; release gives it
// back. A caller must not use the client after release.
func (c *connection) hold() (h *heldClient, release func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h = c.cur
	h.users++
	var once sync.Once
	return h, func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if h.users--; h.users == 0 && h.retired {
				h.client.Close()
			}
		})
	}
}

// call runs f with the current client. If graftd refused the token, the
// token file is read again, so that the next call uses a new token.
func (c *connection) call(ctx context.Context, f func(*sdk.Client) error) error {
	h, release := c.hold()
	err := f(h.client)
	release()
	c.refused(ctx, h, err)
	return err
}

// refused connects again if err says graftd refused the token that h
// used, h is still the current client, and the token file now holds
// another token (the token was rotated or provisioned late).
func (c *connection) refused(ctx context.Context, h *heldClient, err error) {
	if c.cfg.TokenFile == "" || !errors.Is(err, sdk.ErrUnauthenticated) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if h != c.cur || c.closed {
		return // another caller connected again already
	}
	client, token, derr := c.dial(ctx)
	if derr != nil {
		c.cfg.Log.Warn("graftd refused the token, and the token file cannot be read again", "token_file", c.cfg.TokenFile, "err", derr)
		return
	}
	if token == c.token {
		client.Close()
		if c.warned != token {
			c.warned = token
			c.cfg.Log.Warn("graftd refuses the agent's token; put a valid one in the token file (graft token create --principal app:"+c.cfg.App+")", "token_file", c.cfg.TokenFile)
		}
		return
	}
	c.cur, c.token, c.warned = &heldClient{client: client, replaced: make(chan struct{})}, token, ""
	close(h.replaced)
	c.retire(h)
	c.cfg.Log.Info("connected again with the new token from the token file", "token_file", c.cfg.TokenFile)
}
