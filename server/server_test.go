package server_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/audit"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/server"
	"github.com/graft-sh/graft/store"
)

const rootToken = "graft_test-root-token"

// startAudit opens an audit log on js.
func startAudit(t *testing.T, js jetstream.JetStream) *audit.Log {
	t.Helper()
	l, err := audit.New(context.Background(), audit.Config{JetStream: js, HMACKey: make([]byte, 32), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

type harness struct {
	env   *testenv.Env
	srv   *server.Server
	grpc  *grpc.Server
	kv    graftv1.KVServiceClient
	admin graftv1.AdminServiceClient
	conn  *grpc.ClientConn
}

// start serves the API over an in-memory connection backed by a real
// embedded etcd.
func start(t *testing.T) *harness {
	t.Helper()
	return startWith(t, server.Limits{})
}

// startWith is start with limits.
func startWith(t *testing.T, limits server.Limits) *harness {
	t.Helper()
	env := testenv.Start(t)
	ctx := context.Background()
	tokens, err := acl.NewTokens(acl.TokensConfig{Store: env.Store, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := tokens.Put(ctx, acl.TokenRecord{Hash: acl.HashToken(rootToken), Principal: acl.RootPrincipal}); err != nil {
		t.Fatal(err)
	}
	if err := tokens.Put(ctx, acl.TokenRecord{Hash: acl.HashToken("graft_expired"), Principal: "app:x", Expires: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := tokens.Put(ctx, acl.TokenRecord{Hash: acl.HashToken("graft_app"), Principal: "app:x", Roles: []string{"app"}}); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { tokens.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-tokens.Loaded()

	engine, err := acl.NewEngine(acl.EngineConfig{Store: env.Store, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := engine.InstallDefaults(ctx, "test", false); err != nil {
		t.Fatal(err)
	}
	engineDone := make(chan struct{})
	go func() { engine.Run(runCtx); close(engineDone) }()
	t.Cleanup(func() { cancel(); <-engineDone })
	<-engine.Loaded()
	_, js := testenv.StartJetStream(t)
	auditLog := startAudit(t, js)
	rules := replicator.NewRules(env.Store, testenv.Logger(t))
	rulesDone := make(chan struct{})
	go func() { rules.Run(runCtx); close(rulesDone) }()
	t.Cleanup(func() { cancel(); <-rulesDone })
	repl, err := replicator.New(replicator.Config{Store: env.Store, JetStream: js, Rules: rules, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}

	srv, err := server.New(server.Config{Store: env.Store, Auth: tokens, Access: engine, Audit: auditLog, Policies: engine, Replication: repl, Logger: testenv.Logger(t), Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(srv.ServerOptions()...)
	srv.Register(gs)
	ln := bufconn.Listen(1 << 20)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &harness{env: env, srv: srv, grpc: gs, conn: conn, kv: graftv1.NewKVServiceClient(conn), admin: graftv1.NewAdminServiceClient(conn)}
}

func withToken(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

func root() context.Context { return withToken(rootToken) }

func wantCode(t *testing.T, err error, code codes.Code, msgParts ...string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code {
		t.Fatalf("got %v %q, want code %v", st.Code(), st.Message(), code)
	}
	for _, p := range msgParts {
		if !strings.Contains(st.Message(), p) {
			t.Errorf("message %q does not mention %q", st.Message(), p)
		}
	}
}

func TestAuthentication(t *testing.T) {
	h := start(t)
	tests := []struct {
		name string
		ctx  context.Context
		want codes.Code
		msg  string
	}{
		{"no token", context.Background(), codes.Unauthenticated, "no token"},
		{"unknown token", withToken("graft_nope"), codes.Unauthenticated, "unknown or revoked"},
		{"expired token", withToken("graft_expired"), codes.Unauthenticated, "expired"},
		{"root", root(), codes.NotFound, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.kv.Get(tt.ctx, &graftv1.GetRequest{Path: "/app/x/db"})
			wantCode(t, err, tt.want, tt.msg)
			// Streams are authenticated too.
			stream, err := h.kv.Watch(tt.ctx, &graftv1.WatchRequest{Prefix: "/app"})
			if err == nil {
				_, err = stream.Recv()
			}
			if tt.want == codes.Unauthenticated {
				wantCode(t, err, codes.Unauthenticated)
			} else if err != nil {
				t.Fatalf("watch: %v", err)
			}
		})
	}
}

func TestRevokedTokenRefusedWithoutRestart(t *testing.T) {
	h := start(t)
	ctx := withToken("graft_app")
	if _, err := h.kv.Put(ctx, &graftv1.PutRequest{Path: "/app/x/a", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.env.Client.Delete(context.Background(), "/graft/tokens/"+acl.HashToken("graft_app")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		_, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "/app/x/a"})
		if status.Code(err) == codes.Unauthenticated {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("revoked token still accepted after 1s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestErrorsMapToStatus(t *testing.T) {
	h := start(t)
	ctx := root()
	tests := []struct {
		name string
		call func() error
		code codes.Code
		msg  []string
	}{
		{"not found", func() error {
			_, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "/app/x/db"})
			return err
		}, codes.NotFound, []string{"get /app/x/db: not found"}},
		{"dot dot", func() error {
			_, err := h.kv.Put(ctx, &graftv1.PutRequest{Path: "/app/../dba/x", Value: []byte("v")})
			return err
		}, codes.InvalidArgument, []string{`".."`}},
		{"trailing slash", func() error {
			_, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "/app/x/"})
			return err
		}, codes.InvalidArgument, []string{"must not end with /"}},
		{"doubled slash", func() error {
			_, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "/app//x"})
			return err
		}, codes.InvalidArgument, []string{"empty segment"}},
		{"no leading slash", func() error {
			_, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "app/x"})
			return err
		}, codes.InvalidArgument, []string{"must start with /"}},
		{"illegal character", func() error {
			_, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "/app/x%2Fy"})
			return err
		}, codes.InvalidArgument, []string{"not allowed"}},
		{"too deep", func() error {
			_, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: strings.Repeat("/a", store.MaxPathDepth+1)})
			return err
		}, codes.InvalidArgument, []string{"deeper than"}},
		{"too long", func() error {
			_, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "/" + strings.Repeat("a/", 600) + "a"})
			return err
		}, codes.InvalidArgument, []string{"longer than"}},
		{"value too large", func() error {
			_, err := h.kv.Put(ctx, &graftv1.PutRequest{Path: "/app/x/big", Value: make([]byte, store.DefaultMaxValueBytes+1)})
			return err
		}, codes.InvalidArgument, []string{"limit is 262144 bytes"}},
		{"compare and swap", func() error {
			zero := int64(0)
			if _, err := h.kv.Put(ctx, &graftv1.PutRequest{Path: "/app/x/cas", Value: []byte("1"), IfRevision: &zero}); err != nil {
				return err
			}
			_, err := h.kv.Put(ctx, &graftv1.PutRequest{Path: "/app/x/cas", Value: []byte("2"), IfRevision: &zero})
			return err
		}, codes.FailedPrecondition, []string{"/app/x/cas", "expected the path not to exist"}},
		{"restore without revision", func() error {
			_, err := h.kv.Restore(ctx, &graftv1.RestoreRequest{Path: "/app/x/cas"})
			return err
		}, codes.InvalidArgument, []string{"graft history"}},
		{"prefix restore without time", func() error {
			_, err := h.kv.RestorePrefix(ctx, &graftv1.RestorePrefixRequest{Prefix: "/app"})
			return err
		}, codes.InvalidArgument, []string{"point in time"}},
		{"negative watch start", func() error {
			stream, err := h.kv.Watch(ctx, &graftv1.WatchRequest{Prefix: "/p", StartRevision: -1})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}, codes.InvalidArgument, []string{"must not be negative"}},
		{"admin needs root", func() error {
			_, err := h.admin.KeyringStatus(withToken("graft_app"), &graftv1.KeyringStatusRequest{})
			return err
		}, codes.PermissionDenied, []string{"permission denied: app:x may not admin /"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCode(t, tt.call(), tt.code, tt.msg...)
		})
	}
}

func TestKVRoundTrip(t *testing.T) {
	h := start(t)
	ctx := root()
	put, err := h.kv.Put(ctx, &graftv1.PutRequest{Path: "/dba/pp/mongo/password", Value: []byte("p@ssW0rd!1")})
	if err != nil {
		t.Fatal(err)
	}
	if len(put.GetEntry().GetValue()) != 0 {
		t.Error("put response echoes the value")
	}
	got, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "/dba/pp/mongo/password"})
	if err != nil {
		t.Fatal(err)
	}
	e := got.GetEntry()
	if string(e.GetValue()) != "p@ssW0rd!1" || e.GetRevision() != put.GetEntry().GetRevision() || e.GetAuthor() != "root" || e.GetTime() == nil {
		t.Fatalf("got %+v", e)
	}
	if _, err := h.kv.Put(ctx, &graftv1.PutRequest{Path: "/dba/pp/mongo/password", Value: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	old, err := h.kv.Get(ctx, &graftv1.GetRequest{Path: "/dba/pp/mongo/password", Revision: put.GetEntry().GetRevision()})
	if err != nil || string(old.GetEntry().GetValue()) != "p@ssW0rd!1" {
		t.Fatalf("get old revision: %v %v", old, err)
	}
	hist, err := h.kv.History(ctx, &graftv1.HistoryRequest{Path: "/dba/pp/mongo/password"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(hist.GetItems()); n != 2 || !hist.GetItems()[0].GetCurrent() {
		t.Fatalf("history: %v", hist)
	}
	for _, it := range hist.GetItems() {
		if len(it.GetEntry().GetValue()) != 0 {
			t.Error("history carries a value")
		}
	}
	res, err := h.kv.Restore(ctx, &graftv1.RestoreRequest{Path: "/dba/pp/mongo/password", Revision: put.GetEntry().GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	if o := res.GetEntry().GetOrigin(); o.GetKind() != "restore" || o.GetSourceRevision() != put.GetEntry().GetRevision() {
		t.Fatalf("restore origin %v", o)
	}
	list, err := h.kv.List(ctx, &graftv1.ListRequest{Prefix: "/dba", Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetItems()) != 1 || list.GetItems()[0].GetPath() != "/dba/pp/mongo/password" {
		t.Fatalf("list: %v", list)
	}
	if _, err := h.kv.Delete(ctx, &graftv1.DeleteRequest{Path: "/dba/pp/mongo/password"}); err != nil {
		t.Fatal(err)
	}
	_, err = h.kv.Get(ctx, &graftv1.GetRequest{Path: "/dba/pp/mongo/password"})
	wantCode(t, err, codes.NotFound)
}

func TestWatchCompactedIsOutOfRange(t *testing.T) {
	h := start(t)
	ctx := root()
	var last int64
	for i := range 5 {
		r, err := h.kv.Put(ctx, &graftv1.PutRequest{Path: "/app/x/k", Value: []byte{byte(i)}})
		if err != nil {
			t.Fatal(err)
		}
		last = r.GetEntry().GetRevision()
	}
	if _, err := h.env.Client.Compact(context.Background(), last); err != nil {
		t.Fatal(err)
	}
	stream, err := h.kv.Watch(ctx, &graftv1.WatchRequest{Prefix: "/app", StartRevision: 2})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err == nil && msg.GetCreated() && len(msg.GetEvents()) == 0 {
		_, err = stream.Recv() // the store may learn of the compaction only after the watch exists
	}
	wantCode(t, err, codes.OutOfRange, "revision 2 has been compacted", "oldest available is")
}

func TestStopEndsWatchesWithUnavailable(t *testing.T) {
	h := start(t)
	stream, err := h.kv.Watch(root(), &graftv1.WatchRequest{Prefix: "/"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || !first.GetCreated() {
		t.Fatalf("first message %v, %v", first, err)
	}
	if _, err := h.kv.Put(root(), &graftv1.PutRequest{Path: "/a/b", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil || len(ev.GetEvents()) != 1 {
		t.Fatalf("event %v, %v", ev, err)
	}
	stopped := make(chan struct{})
	go func() { h.srv.Stop(); h.grpc.GracefulStop(); close(stopped) }()
	_, err = stream.Recv()
	wantCode(t, err, codes.Unavailable, "shutting down", "resume from revision")
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("graceful stop did not finish: a watch kept it open")
	}
}
