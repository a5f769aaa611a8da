package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/graftdtest"
)

func newToken(t *testing.T, c graftdtest.Clients, rootCtx context.Context, principal string, roles ...string) context.Context {
	t.Helper()
	resp, err := c.Tokens.CreateToken(rootCtx, &graftv1.CreateTokenRequest{Principal: principal, Roles: roles})
	if err != nil {
		t.Fatalf("create token for %s: %v", principal, err)
	}
	return withToken(resp.GetToken())
}

// TestPersonas runs who × what × where through the real gRPC server with
// the default policies graftd --dev installs.
func TestPersonas(t *testing.T) {
	g := graftdtest.Start(t)
	c := graftdtest.Dial(t, g.Addr)
	rootCtx := withToken(g.Token)
	const (
		dbaPW   = "/dba/passpack/services/message-processor/mongo/password"
		mpConf  = "/app/message-processor/config/workers"
		mpRepl  = "/app/message-processor/replicated/mongo/password"
		other   = "/app/other/config/x"
		evil    = "/app/message-processor-evil/config/x"
		upper   = "/APP/message-processor/config/workers"
		dotDot  = "/app/message-processor/../other/config/x"
		encoded = "/app/message-processor%2F..%2Fother/config/x"
		unicode = "/app/message\u2010processor/config/workers"
		slashes = "/app//message-processor/config/workers"
	)
	for _, p := range []string{dbaPW, mpConf, mpRepl, other, evil, upper} {
		if _, err := c.KV.Put(rootCtx, &graftv1.PutRequest{Path: p, Value: []byte("seed")}); err != nil {
			t.Fatal(err)
		}
	}
	personas := map[string]context.Context{
		"root": rootCtx,
		"dba":  newToken(t, c, rootCtx, "user:dana", "dba"),
		"mp":   newToken(t, c, rootCtx, "app:message-processor", "app"),
		"evil": newToken(t, c, rootCtx, "app:message-processor-evil", "app"),
	}
	read := func(ctx context.Context, p string) error {
		_, err := c.KV.Get(ctx, &graftv1.GetRequest{Path: p})
		return err
	}
	write := func(ctx context.Context, p string) error {
		_, err := c.KV.Put(ctx, &graftv1.PutRequest{Path: p, Value: []byte("x")})
		return err
	}
	del := func(ctx context.Context, p string) error {
		_, err := c.KV.Delete(ctx, &graftv1.DeleteRequest{Path: p})
		return err
	}
	history := func(ctx context.Context, p string) error {
		_, err := c.KV.History(ctx, &graftv1.HistoryRequest{Path: p})
		return err
	}
	ops := map[string]func(context.Context, string) error{"read": read, "write": write, "delete": del, "history": history}
	tests := []struct {
		who, op, path string
		want          codes.Code
	}{
		{"root", "read", dbaPW, codes.OK},
		{"root", "read", mpConf, codes.OK},
		{"dba", "read", dbaPW, codes.OK},
		{"dba", "write", dbaPW, codes.OK},
		{"dba", "history", dbaPW, codes.OK},
		{"dba", "read", mpConf, codes.PermissionDenied},
		{"dba", "read", mpRepl, codes.PermissionDenied},
		{"dba", "write", mpConf, codes.PermissionDenied},
		{"mp", "read", mpConf, codes.OK},
		{"mp", "write", mpConf, codes.OK},
		{"mp", "read", mpRepl, codes.OK},
		{"mp", "write", mpRepl, codes.PermissionDenied},
		{"mp", "delete", mpRepl, codes.PermissionDenied},
		{"mp", "read", dbaPW, codes.PermissionDenied},
		{"mp", "history", dbaPW, codes.PermissionDenied},
		{"mp", "write", "/dba/new", codes.PermissionDenied},
		{"mp", "read", other, codes.PermissionDenied},
		{"mp", "read", evil, codes.PermissionDenied},
		{"mp", "write", evil, codes.PermissionDenied},
		{"mp", "read", upper, codes.PermissionDenied},
		{"mp", "read", dotDot, codes.InvalidArgument},
		{"mp", "read", encoded, codes.InvalidArgument},
		{"mp", "read", unicode, codes.InvalidArgument},
		{"mp", "read", slashes, codes.InvalidArgument},
		{"mp", "read", mpConf + "/", codes.InvalidArgument},
		{"evil", "read", evil, codes.OK},
		{"evil", "read", mpConf, codes.PermissionDenied},
		{"evil", "write", "/app/message-processor/config/injected", codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %s %s", tt.who, tt.op, tt.path), func(t *testing.T) {
			err := ops[tt.op](personas[tt.who], tt.path)
			if got := status.Code(err); got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
			if tt.want == codes.PermissionDenied && !strings.Contains(status.Convert(err).Message(), "may not") {
				t.Errorf("denial %q does not name principal, action and path", status.Convert(err).Message())
			}
		})
	}

	t.Run("list shows only what the caller may list", func(t *testing.T) {
		got := listAll(t, c, personas["mp"], "/")
		for _, p := range got {
			if !strings.HasPrefix(p, "/app/message-processor/") {
				t.Errorf("app:message-processor listed %s", p)
			}
		}
		if len(got) != 2 {
			t.Errorf("listing = %v, want its config and replicated keys", got)
		}
		// Directories fold only from visible paths: /dba must not appear.
		resp, err := c.KV.List(personas["mp"], &graftv1.ListRequest{Prefix: "/"})
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range resp.GetItems() {
			if it.GetPath() != "/app" {
				t.Errorf("non-recursive listing of / shows %s", it.GetPath())
			}
		}
		if got := listAll(t, c, personas["dba"], "/app"); len(got) != 0 {
			t.Errorf("a DBA listed %v under /app", got)
		}
	})

	t.Run("watch shows only what the caller may see", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(personas["mp"], 10*time.Second)
		defer cancel()
		stream, err := c.KV.Watch(ctx, &graftv1.WatchRequest{Prefix: "/"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{dbaPW, other, evil, mpConf} {
			if _, err := c.KV.Put(rootCtx, &graftv1.PutRequest{Path: p, Value: []byte("watched")}); err != nil {
				t.Fatal(err)
			}
		}
		for {
			msg, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range msg.GetEvents() {
				if p := ev.GetEntry().GetPath(); p != mpConf {
					t.Fatalf("app:message-processor saw a change of %s", p)
				}
				return // its own key arrived, after the three it must not see
			}
		}
	})

	t.Run("audit records allowed and denied requests without values", func(t *testing.T) {
		if _, err := c.KV.Put(personas["mp"], &graftv1.PutRequest{Path: mpConf, Value: []byte("s3cr3t-v4lue")}); err != nil {
			t.Fatal(err)
		}
		_ = read(personas["mp"], dbaPW)
		var recs []*graftv1.AuditRecord
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp, err := c.Audit.QueryAudit(rootCtx, &graftv1.QueryAuditRequest{Principal: "app:message-processor", Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			recs = resp.GetRecords()
			if hasRecord(recs, "Get", dbaPW, "denied") || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !hasRecord(recs, "Put", mpConf, "ok") || !hasRecord(recs, "Put", mpConf, "allowed") || !hasRecord(recs, "Get", dbaPW, "denied") {
			t.Fatalf("audit lacks the put (allowed and ok) or the denied get: %v", recs)
		}
		for _, r := range recs {
			if strings.Contains(r.String(), "s3cr3t-v4lue") {
				t.Fatal("a value reached the audit log")
			}
			if r.GetMethod() == "Put" && r.GetResult() == "ok" && (r.GetValueHmac() == "" || r.GetRevision() == 0) {
				t.Errorf("write record without HMAC or revision: %v", r)
			}
		}
		_, err := c.Audit.QueryAudit(personas["mp"], &graftv1.QueryAuditRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("an app read the audit log: %v", err)
		}
	})
}

func hasRecord(recs []*graftv1.AuditRecord, method, path, result string) bool {
	for _, r := range recs {
		if r.GetMethod() == method && r.GetPath() == path && r.GetResult() == result {
			return true
		}
	}
	return false
}

func listAll(t *testing.T, c graftdtest.Clients, ctx context.Context, prefix string) []string {
	t.Helper()
	resp, err := c.KV.List(ctx, &graftv1.ListRequest{Prefix: prefix, Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, it := range resp.GetItems() {
		out = append(out, it.GetPath())
	}
	return out
}
