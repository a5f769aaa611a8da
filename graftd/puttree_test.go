package graftd_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
)

// A tree write reaches its replicated copies as one change too: every
// time, the application's user and password copies share a revision, so
// no agent renders a user with the other user's password. A caller who may
// not write every path writes none.
func TestPutTreeIsOneChangeAtTheCopies(t *testing.T) {
	g := graftdtest.Start(t)
	c := graftdtest.Dial(t, g.Addr)
	root := authed(g.Token)
	if _, err := c.Replication.Share(root, &graftv1.ShareRequest{Source: "/dba/pg", Destinations: []string{"/app/mp/replicated/pg"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		user, pw := []byte("user-"+string(rune('a'+i%26))), []byte("pw-"+string(rune('a'+i%26)))
		resp, err := c.KV.PutTree(root, &graftv1.PutTreeRequest{Path: "/dba/pg", Values: map[string][]byte{"user": user, "password": pw}})
		if err != nil {
			t.Fatal(err)
		}
		if es := resp.GetEntries(); len(es) != 2 || es[0].GetRevision() != es[1].GetRevision() {
			t.Fatalf("tree write %d: %v", i, es)
		}
		var u, p *graftv1.Entry
		testenv.WaitFor(t, 5*time.Second, func() bool {
			tree, err := c.KV.ReadTree(root, &graftv1.ReadTreeRequest{Path: "/app/mp/replicated/pg"})
			if err != nil || len(tree.GetEntries()) != 2 {
				return false
			}
			p, u = tree.GetEntries()[0], tree.GetEntries()[1]
			return string(u.GetValue()) == string(user) && string(p.GetValue()) == string(pw)
		})
		if u.GetRevision() != p.GetRevision() {
			t.Fatalf("tree write %d: the copies changed apart, user at %d and password at %d", i, u.GetRevision(), p.GetRevision())
		}
	}

	created, err := c.Tokens.CreateToken(root, &graftv1.CreateTokenRequest{Principal: "app:mp", Roles: []string{"app"}})
	if err != nil {
		t.Fatal(err)
	}
	app := authed(created.GetToken())
	if _, err := c.KV.PutTree(app, &graftv1.PutTreeRequest{Path: "/app/mp", Values: map[string][]byte{"config/a": []byte("1"), "replicated/pg/user": []byte("x")}}); status.Code(err) == codes.OK {
		t.Fatal("an application wrote into its replicated tree")
	}
	if _, err := c.KV.PutTree(app, &graftv1.PutTreeRequest{Path: "/app/mp", Values: map[string][]byte{"config/a": []byte("1"), "../../dba/pg/user": []byte("x")}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a key out of the tree: %v, want InvalidArgument", err)
	}
	if _, err := c.KV.Get(root, &graftv1.GetRequest{Path: "/app/mp/config/a"}); status.Code(err) != codes.NotFound {
		t.Fatalf("a refused tree write wrote part of itself: %v", err)
	}
	if _, err := c.KV.PutTree(app, &graftv1.PutTreeRequest{Path: "/app/mp/config", Values: map[string][]byte{"a": []byte("1"), "b": []byte("2")}}); err != nil {
		t.Fatalf("an application's own tree write: %v", err)
	}
}
