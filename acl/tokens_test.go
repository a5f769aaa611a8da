package acl_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/internal/testenv"
)

func TestNewTokenAndHash(t *testing.T) {
	a, b := acl.NewToken(), acl.NewToken()
	if a == b || !strings.HasPrefix(a, "graft_") || len(a) < 40 {
		t.Fatalf("tokens %q %q: want distinct, prefixed, 32 random bytes", a, b)
	}
	if h := acl.HashToken(a); h != acl.HashToken(a) || len(h) != 64 || strings.Contains(h, a) {
		t.Fatalf("hash %q of %q", h, a)
	}
}

func TestAuthenticate(t *testing.T) {
	env := testenv.Start(t)
	ctx := context.Background()
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	tokens, err := acl.NewTokens(acl.TokensConfig{Store: env.Store, Logger: testenv.Logger(t), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	put := func(token, principal string, expires time.Time) {
		t.Helper()
		if err := tokens.Put(ctx, acl.TokenRecord{Hash: acl.HashToken(token), Principal: principal, Roles: []string{"app"}, Expires: expires}); err != nil {
			t.Fatal(err)
		}
	}
	put("graft_live", "app:orders", time.Time{})
	put("graft_soon", "app:billing", now.Add(time.Minute))
	put("graft_past", "app:old", now.Add(-time.Second))

	if _, err := tokens.Authenticate(ctx, "graft_live"); !errors.Is(err, acl.ErrNotReady) {
		t.Fatalf("before loading: %v, want ErrNotReady", err)
	}
	run(t, tokens)

	tests := []struct {
		token   string
		want    string
		wantErr error
	}{
		{"", "", acl.ErrNoToken},
		{"graft_live", "app:orders", nil},
		{"graft_soon", "app:billing", nil},
		{"graft_past", "", acl.ErrExpiredToken},
		{"graft_unknown", "", acl.ErrUnknownToken},
		{"graft_live ", "", acl.ErrUnknownToken}, // no normalisation: a token is exact
	}
	for _, tt := range tests {
		p, err := tokens.Authenticate(ctx, tt.token)
		if !errors.Is(err, tt.wantErr) || p.Name != tt.want {
			t.Errorf("Authenticate(%q) = %q, %v; want %q, %v", tt.token, p.Name, err, tt.want, tt.wantErr)
		}
	}

	// Changes arrive through the watch: a new token works and a deleted
	// one stops working, without reloading.
	put("graft_new", "app:new", time.Time{})
	if _, err := env.Client.Delete(ctx, "/graft/tokens/"+acl.HashToken("graft_live")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		_, errNew := tokens.Authenticate(ctx, "graft_new")
		_, errOld := tokens.Authenticate(ctx, "graft_live")
		if errNew == nil && errors.Is(errOld, acl.ErrUnknownToken) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 1s: new token %v, revoked token %v", errNew, errOld)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Put and Delete are in effect when they return, and the watch delivering
// the same changes afterwards does not undo a later one: a token created
// and then revoked stays revoked.
func TestTokensPutAndDeleteTakeEffectAtOnce(t *testing.T) {
	env := testenv.Start(t)
	ctx := context.Background()
	tokens := runTokens(t, acl.TokensConfig{Store: env.Store, Logger: testenv.Logger(t)})

	for i := range 50 {
		rec := acl.TokenRecord{Hash: acl.HashToken("graft_short-lived"), Principal: "app:a", Roles: []string{"app"}}
		if err := tokens.Put(ctx, rec); err != nil {
			t.Fatal(err)
		}
		if _, err := tokens.Authenticate(ctx, "graft_short-lived"); err != nil {
			t.Fatalf("round %d: right after Put, a created token: %v", i, err)
		}
		if err := tokens.Delete(ctx, rec.Hash); err != nil {
			t.Fatal(err)
		}
		// The watch now replays the put and the delete; neither may make
		// the token work again.
		for range 3 {
			if _, err := tokens.Authenticate(ctx, "graft_short-lived"); !errors.Is(err, acl.ErrUnknownToken) {
				t.Fatalf("round %d: a revoked token: %v; want ErrUnknownToken", i, err)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// runTokens runs a Tokens until the test ends and waits for it to load.
func runTokens(t *testing.T, cfg acl.TokensConfig) *acl.Tokens {
	t.Helper()
	tokens, err := acl.NewTokens(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, tokens)
	return tokens
}

// run runs tokens until the test ends and waits for it to load.
func run(t *testing.T, tokens *acl.Tokens) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tokens.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-tokens.Loaded()
}
