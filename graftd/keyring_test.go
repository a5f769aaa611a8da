package graftd_test

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/keyring"
)

// TestKeyringRotation follows the operator's path: rotate the keyring file
// under a running graftd, see graftd pick the new key up, sweep, and find
// every value (current and history) readable and under the new key.
func TestKeyringRotation(t *testing.T) {
	g := graftdtest.Start(t)
	conn, err := grpc.NewClient(g.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv, admin := graftv1.NewKVServiceClient(conn), graftv1.NewAdminServiceClient(conn)
	ctx := authed(g.Token)

	first, err := kv.Put(ctx, &graftv1.PutRequest{Path: "/dba/db/password", Value: []byte("one")})
	if err != nil {
		t.Fatal(err)
	}
	second, err := kv.Put(ctx, &graftv1.PutRequest{Path: "/dba/db/password", Value: []byte("two")})
	if err != nil {
		t.Fatal(err)
	}

	id, err := keyring.RotateFile(g.KeyringFile())
	if err != nil || id != 2 {
		t.Fatalf("rotate = %d, %v", id, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := admin.KeyringStatus(ctx, &graftv1.KeyringStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetPrimaryKeyId() == 2 && len(st.GetKeyIds()) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("graftd did not pick up the rotated keyring: %v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sweep, err := admin.ReencryptSweep(ctx, &graftv1.ReencryptSweepRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if sweep.GetPrimaryKeyId() != 2 || sweep.GetReencrypted() != 3 {
		t.Errorf("sweep = %v, want 3 records (current, history, audit key) re-encrypted under key 2", sweep)
	}
	again, err := admin.ReencryptSweep(ctx, &graftv1.ReencryptSweepRequest{})
	if err != nil || again.GetReencrypted() != 0 {
		t.Errorf("a second sweep re-encrypted %d records (%v), want 0", again.GetReencrypted(), err)
	}
	cur, err := kv.Get(ctx, &graftv1.GetRequest{Path: "/dba/db/password"})
	if err != nil || string(cur.GetEntry().GetValue()) != "two" || cur.GetEntry().GetRevision() != second.GetEntry().GetRevision() {
		t.Fatalf("current after sweep: %v %v (revision must not change)", cur, err)
	}
	old, err := kv.Get(ctx, &graftv1.GetRequest{Path: "/dba/db/password", Revision: first.GetEntry().GetRevision()})
	if err != nil || string(old.GetEntry().GetValue()) != "one" {
		t.Fatalf("history after sweep: %v %v", old, err)
	}
}
