package graftd_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/testenv"
)

// The attack of issue 18, end to end against one graftd with mTLS and a
// trust domain: a certificate with CN=app:pet and no SPIFFE ID, a report
// without the report grant, at revision 2^40, of keys "/" or of another
// tree, with escape sequences, under another process's id, and a report
// made before a publish, which must not count as its rollout. And what a
// DBA's rollout status shows of an application it may not read.
func TestForgedAcknowledgementsAreRefused(t *testing.T) {
	ca := newCA(t)
	g, roots := startMTLS(t, ca, func(c *graftd.Config) { c.TrustDomain = "example.org" })
	// dial connects with the certificate of cn and uri ("" and "": none).
	dial := func(cn, uri string) graftv1.AgentServiceClient {
		t.Helper()
		issuer := ca
		if cn == "" && uri == "" {
			issuer = nil
		}
		return graftv1.NewAgentServiceClient(dialCert(t, g.Addr, roots, issuer, cn, uri))
	}
	conn := dialCert(t, g.Addr, roots, nil, "", "")
	kv, repl, policies, tokens := graftv1.NewKVServiceClient(conn), graftv1.NewReplicationServiceClient(conn), graftv1.NewPolicyServiceClient(conn), graftv1.NewTokenServiceClient(conn)
	agents := graftv1.NewAgentServiceClient(conn)
	as := func(token string) context.Context {
		return metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token)
	}
	root := as(g.Token)
	token := func(principal, role string) context.Context {
		t.Helper()
		resp, err := tokens.CreateToken(root, &graftv1.CreateTokenRequest{Principal: principal, Roles: []string{role}})
		if err != nil {
			t.Fatal(err)
		}
		return as(resp.GetToken())
	}
	refused := func(what string, code codes.Code, says string, err error) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v; want %s saying %q", what, err, code, says)
		}
	}

	const source, copyOf = "/dba/svc/pet/pg/password", "/app/pet/replicated/pg/password"
	if _, err := kv.Put(root, &graftv1.PutRequest{Path: source, Value: []byte("blue")}); err != nil {
		t.Fatal(err)
	}
	if _, err := repl.Share(root, &graftv1.ShareRequest{Source: "/dba/svc/pet/pg", Destinations: []string{"/app/pet/replicated/pg"}}); err != nil {
		t.Fatal(err)
	}
	revOf := func(path string) int64 {
		t.Helper()
		var rev int64
		testenv.WaitFor(t, 10*time.Second, func() bool {
			e, err := kv.Get(root, &graftv1.GetRequest{Path: path})
			rev = e.GetEntry().GetRevision()
			return err == nil
		})
		return rev
	}
	petCtx := token("app:pet", "app")
	revOf(copyOf)
	report := func(ctx context.Context, c graftv1.AgentServiceClient, r *graftv1.AgentReport) error {
		_, err := c.Report(ctx, &graftv1.ReportRequest{Report: r})
		return err
	}
	keys := func(k ...string) []*graftv1.TemplateReport {
		return []*graftv1.TemplateReport{{Destination: "/etc/pet/db.env", Keys: k}}
	}

	// The forged certificate is no identity at all.
	forged := dial("app:pet", "")
	refused("a CN=app:pet certificate without a SPIFFE ID", codes.Unauthenticated, "allow-cn-identities",
		report(t.Context(), forged, &graftv1.AgentReport{Id: "x", App: "pet", Revision: 1, Healthy: true, Templates: keys("/app/pet/replicated/pg/")}))

	// A name that matches is not a grant: a role without report (as a
	// cluster whose policies predate it has) is refused, saying how to
	// get it.
	if _, err := policies.PutPolicy(root, &graftv1.PutPolicyRequest{Yaml: "role: old-app\nrules:\n  - allow: [read, list, write, delete]\n    paths: ['/app/{name}/**']\n"}); err != nil {
		t.Fatal(err)
	}
	refused("a report without the report grant", codes.PermissionDenied, "graft policy init",
		report(token("app:pet", "old-app"), agents, &graftv1.AgentReport{Id: "x", App: "pet", Revision: 1, Healthy: true}))
	refused("a report for another app", codes.PermissionDenied, "may not report /app/other",
		report(petCtx, agents, &graftv1.AgentReport{Id: "x", App: "other", Revision: 1, Healthy: true}))

	// The application's own identity, a SPIFFE ID in the trust domain.
	pet := dial("", "spiffe://example.org/app/pet")
	for _, rev := range []int64{1_000_000, 1 << 40} {
		refused("a report past the store's revision", codes.InvalidArgument, "past the store's current revision",
			report(t.Context(), pet, &graftv1.AgentReport{Id: "x", App: "pet", Revision: rev, Healthy: true, Templates: keys("/app/pet/replicated/pg/")}))
	}
	for _, k := range []string{"/", "/dba/svc/pet/pg/password", "/app/other/replicated/pg/password", "/app/"} {
		refused("a report of key "+k, codes.InvalidArgument, "the agent's own tree",
			report(t.Context(), pet, &graftv1.AgentReport{Id: "x", App: "pet", Revision: 1, Healthy: true, Templates: keys(k)}))
	}
	refused("an escape sequence in the host", codes.InvalidArgument, "control character",
		report(t.Context(), pet, &graftv1.AgentReport{Id: "x", App: "pet", Host: "h\x1b]0;owned\x07", Revision: 1}))
	// An oversized id is refused without being echoed back whole.
	longID := strings.Repeat("b", 1<<20)
	err := report(t.Context(), pet, &graftv1.AgentReport{Id: longID, App: "pet", Revision: 1})
	if msg := status.Convert(err).Message(); status.Code(err) != codes.InvalidArgument || len(msg) > 1024 || !strings.Contains(msg, "at most 253 bytes") {
		t.Errorf("a 1 MiB agent id: %s, %d bytes: %.300q; want InvalidArgument saying at most 253 bytes, without echoing the id", status.Code(err), len(msg), msg)
	}

	// Reports made before the publish, at the highest revision the store
	// allowed then.
	before := revOf(copyOf)
	if err := report(t.Context(), pet, &graftv1.AgentReport{Id: "web-1", Instance: "i-1", App: "pet", Revision: before, Healthy: true, Templates: keys("/app/pet/replicated/pg/")}); err != nil {
		t.Fatalf("the app's own report: %v", err)
	}
	refused("a second agent process under the id", codes.FailedPrecondition, "its own id:",
		report(t.Context(), pet, &graftv1.AgentReport{Id: "web-1", Instance: "i-2", App: "pet", Revision: before, Healthy: true}))
	// app:evil may not claim to read the path, and its own unhealthy
	// agent does not hold up the path's rollout.
	evil := token("app:evil", "app")
	refused("app:evil reporting keys /", codes.InvalidArgument, "the agent's own tree",
		report(evil, agents, &graftv1.AgentReport{Id: "e", App: "evil", Revision: 1, Templates: []*graftv1.TemplateReport{{Destination: "/x", Keys: []string{"/"}}}}))
	if err := report(evil, agents, &graftv1.AgentReport{Id: "e", App: "evil", Revision: 1, Templates: []*graftv1.TemplateReport{{Destination: "/x", Keys: []string{"/app/evil/"}}}}); err != nil {
		t.Fatalf("app:evil reporting its own tree: %v", err)
	}

	pub, err := kv.Put(root, &graftv1.PutRequest{Path: source, Value: []byte("green")})
	if err != nil {
		t.Fatal(err)
	}
	published := pub.GetEntry().GetRevision()
	testenv.WaitFor(t, 10*time.Second, func() bool { return revOf(copyOf) > published })
	st, err := agents.RolloutStatus(root, &graftv1.RolloutStatusRequest{Path: source, Revision: published})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetConsumers()) != 1 || st.GetConsumers()[0].GetAgent().GetApp() != "pet" || st.GetConsumers()[0].GetOk() || st.GetComplete() {
		t.Fatalf("rollout of revision %d with only a report made before it: %v; want pet's agent alone, not ok", published, st)
	}

	// The agent runs the copy, with a template that failed: a DBA, who
	// may not read /app/pet, learns that, not the key or file names or
	// the error's text.
	now := revOf(copyOf)
	if err := report(t.Context(), pet, &graftv1.AgentReport{Id: "web-1", Instance: "i-1", App: "pet", Revision: now, Healthy: true,
		Templates: []*graftv1.TemplateReport{{Destination: "/etc/pet/db.env", Keys: []string{"/app/pet/replicated/pg/"}, Error: "range can't iterate over SECRET-TEXT"}}}); err != nil {
		t.Fatal(err)
	}
	st, err = agents.RolloutStatus(token("user:dora", "dba"), &graftv1.RolloutStatusRequest{Path: source, Revision: published})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetConsumers()) != 1 {
		t.Fatalf("a DBA's rollout status: %v", st)
	}
	shown := st.GetConsumers()[0].String()
	for _, secret := range []string{"SECRET-TEXT", "db.env"} {
		if strings.Contains(shown, secret) {
			t.Errorf("a DBA who may not read /app/pet sees %q: %s", secret, shown)
		}
	}
	for _, tr := range st.GetConsumers()[0].GetAgent().GetTemplates() {
		if len(tr.GetKeys()) != 0 {
			t.Errorf("a DBA who may not read /app/pet sees its keys: %s", shown)
		}
	}
	if c := st.GetConsumers()[0]; c.GetOk() || !strings.Contains(c.GetReason(), "details hidden") {
		t.Errorf("a DBA's view of the failed consumer: %v", c)
	}
	// agents ls: nothing for who may not list /app/pet; the agent without
	// its keys, files and texts for who may list but not read it.
	if ls, err := agents.ListAgents(token("user:dora", "dba"), &graftv1.ListAgentsRequest{}); err != nil || len(ls.GetAgents()) != 0 {
		t.Errorf("a DBA's agents ls: %v, %v; want no agent", ls, err)
	}
	if _, err := policies.PutPolicy(root, &graftv1.PutPolicyRequest{Yaml: "role: pet-lister\nrules:\n  - allow: [list]\n    paths: ['/app/pet/**']\n"}); err != nil {
		t.Fatal(err)
	}
	ls, err := agents.ListAgents(token("user:lister", "pet-lister"), &graftv1.ListAgentsRequest{App: "pet"})
	if err != nil || len(ls.GetAgents()) != 1 {
		t.Fatalf("a lister's agents ls: %v, %v", ls, err)
	}
	if shown := ls.GetAgents()[0].String(); strings.Contains(shown, "SECRET-TEXT") || strings.Contains(shown, "db.env") || strings.Contains(shown, "replicated/pg/") {
		t.Errorf("who may list but not read /app/pet sees its keys or texts: %s", shown)
	}
	st, _ = agents.RolloutStatus(root, &graftv1.RolloutStatusRequest{Path: source, Revision: published})
	if !strings.Contains(st.GetConsumers()[0].GetReason(), "SECRET-TEXT") {
		t.Errorf("an admin's view lost the template error: %v", st.GetConsumers()[0])
	}

	// Rendered and healthy: the rollout is complete.
	if err := report(t.Context(), pet, &graftv1.AgentReport{Id: "web-1", Instance: "i-1", App: "pet", Revision: now, Healthy: true, Templates: keys("/app/pet/replicated/pg/")}); err != nil {
		t.Fatal(err)
	}
	st, err = agents.RolloutStatus(root, &graftv1.RolloutStatusRequest{Path: source, Revision: published})
	if err != nil || !st.GetComplete() {
		t.Fatalf("after the agent ran the copy: %v, %v", st, err)
	}
}
