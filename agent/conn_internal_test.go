package agent

import (
	"os"
	"testing"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/sdk"
)

// A client replaced by a new token from the token file stays open for
// the call that holds it, and is closed once that call gives it back;
// the next call gets the new client, and a second refusal of the old one
// changes nothing.
func TestConnectionClosesAReplacedClientAfterItsCalls(t *testing.T) {
	g := graftdtest.Start(t)
	ctx := t.Context()
	tf, _ := g.TokenFile(t, "app:mp", "app")
	_, newToken := g.TokenFile(t, "app:mp", "app")
	c, err := newConnection(ctx, connConfig{SDK: sdk.Config{Addr: g.Addr}, TokenFile: tf, App: "mp"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	old, release := c.hold()
	if err := os.WriteFile(tf, []byte(newToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.refused(ctx, old, sdk.ErrUnauthenticated)
	select {
	case <-old.replaced:
	default:
		t.Fatal("the refused client was not replaced")
	}
	if _, err := old.client.WhoAmI(ctx); err != nil {
		t.Fatalf("the replaced client was closed under the call holding it: %v", err)
	}
	cur, releaseCur := c.hold()
	if cur == old {
		t.Fatal("the next call got the replaced client")
	}
	releaseCur()
	release()
	if _, err := old.client.WhoAmI(ctx); err == nil {
		t.Fatal("the replaced client is still open after its last call")
	}
	c.refused(ctx, old, sdk.ErrUnauthenticated)
	if now, releaseNow := c.hold(); now != cur {
		t.Fatal("a late refusal of the replaced client replaced the new one")
	} else {
		releaseNow()
	}
	if err := c.call(ctx, func(cl *sdk.Client) error { _, err := cl.WhoAmI(ctx); return err }); err != nil {
		t.Fatalf("a call with the new token: %v", err)
	}
}
