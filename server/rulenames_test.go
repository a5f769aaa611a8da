package server_test

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// TestRuleNamesShownOnlyToWhoMayListThem: an application sees of a rule
// that feeds many applications only its own copy, and a share refused for
// a conflict does not name another owner's rule, source or destinations.
func TestRuleNamesShownOnlyToWhoMayListThem(t *testing.T) {
	h := start(t)
	repl := graftv1.NewReplicationServiceClient(h.conn)
	for _, p := range []string{"/dba/s", "/platform/k"} {
		if _, err := h.kv.Put(root(), &graftv1.PutRequest{Path: p, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	shared, err := repl.Share(root(), &graftv1.ShareRequest{Source: "/dba/s", Destinations: []string{"/app/x/replicated/s", "/app/y/replicated/s"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repl.Share(root(), &graftv1.ShareRequest{Source: "/platform/k", Destinations: []string{"/app/y/replicated/k"}}); err != nil {
		t.Fatal(err)
	}

	app := withToken("graft_app") // app:x
	list, err := repl.ListRules(app, &graftv1.ListRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetRules()) != 1 || !slices.Equal(list.GetRules()[0].GetDestinations(), []string{"/app/x/replicated/s"}) {
		t.Errorf("rules ls by app:x = %v, want the /dba/s rule with its own destination only", list.GetRules())
	}
	got, err := repl.GetRule(app, &graftv1.GetRuleRequest{Id: shared.GetRule().GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.GetRule().GetDestinations(), []string{"/app/x/replicated/s"}) {
		t.Errorf("rules get by app:x = %v", got.GetRule().GetDestinations())
	}
	st, err := repl.ReplicationStatus(app, &graftv1.ReplicationStatusRequest{Path: "/app/x/replicated/s"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.GetRule().GetDestinations(), []string{"/app/x/replicated/s"}) {
		t.Errorf("status by app:x shows destinations %v", st.GetRule().GetDestinations())
	}
	// The owner of the source sees every destination.
	if all, _ := repl.ListRules(root(), &graftv1.ListRulesRequest{Source: "/dba/s"}); len(all.GetRules()) != 1 || len(all.GetRules()[0].GetDestinations()) != 2 {
		t.Errorf("rules ls /dba/s by root = %v", all.GetRules())
	}

	tok, err := graftv1.NewTokenServiceClient(h.conn).CreateToken(root(), &graftv1.CreateTokenRequest{Principal: "user:dora", Roles: []string{"dba"}})
	if err != nil {
		t.Fatal(err)
	}
	dba := withToken(tok.GetToken())
	for _, dest := range []string{"/app/y/replicated/k", "/app/+/replicated/k"} {
		_, err := repl.Share(dba, &graftv1.ShareRequest{Source: "/dba/s", Destinations: []string{dest}})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("share /dba/s to %s by a dba: %v, want FailedPrecondition", dest, err)
		}
		msg := status.Convert(err).Message()
		for _, leak := range []string{"/platform", "/app/y/replicated/k", "r-"} {
			if strings.Contains(msg, leak) && !strings.Contains(dest, leak) {
				t.Errorf("share to %s: the error names %q: %s", dest, leak, msg)
			}
		}
	}
}
