package rotation

import (
	"strings"
	"testing"
)

// A rotation counts an acknowledgement only at or past the revision it
// published (issue 18: a forged report of revision 2^40 retired a user
// still in use, and any graftd that still says OK must not suffice).
func TestJudgeCountsOnlyAcksOfThePublishedRevision(t *testing.T) {
	const published = 100
	x := &run{spec: Spec{Consumers: []string{"app:pet"}}}
	tests := []struct {
		name string
		c    Consumer
		done bool
	}{
		{"at the published revision", Consumer{App: "pet", ID: "a", OK: true, Revision: published, Since: 5}, true},
		{"past it", Consumer{App: "pet", ID: "a", OK: true, Revision: published + 7, Since: 5}, true},
		{"before it, though graftd says ok", Consumer{App: "pet", ID: "a", OK: true, Revision: published - 1, Since: 5}, false},
		{"not ok", Consumer{App: "pet", ID: "a", Revision: published, Reason: "template failed"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done, acked, why := x.judge(Rollout{Consumers: []Consumer{tt.c}}, published)
			if done != tt.done || (len(acked) == 1) != tt.done {
				t.Fatalf("judge = %v, %v, %q; want done %v", done, acked, why, tt.done)
			}
			if !done && !strings.Contains(why, "pet/a") {
				t.Fatalf("why = %q; want it to name pet/a", why)
			}
		})
	}
}

// The retire grace ends early only when every consumer application uses
// the credential through graft-agent's broker alone, runs the new one,
// and has no session left as another user: a consumer that renders the
// credential into a file may hold the old one in its pool, and a broker
// with a session still open as the old user holds it too.
func TestSessionsEndedCutsTheGraceOnlyForBrokersWithNoOldSession(t *testing.T) {
	x := &run{spec: Spec{Consumers: []string{"app:pet", "app:shop"}}}
	idle := func(app string) Consumer { return Consumer{App: app, ID: "a", OK: true, BrokerOnly: true} }
	tests := []struct {
		name string
		cs   []Consumer
		want bool
	}{
		{"both brokers, no old session", []Consumer{idle("pet"), idle("shop")}, true},
		{"an old session open", []Consumer{idle("pet"), {App: "shop", ID: "a", OK: true, BrokerOnly: true, OldSessions: 1}}, false},
		{"a template reads it", []Consumer{idle("pet"), {App: "shop", ID: "a", OK: true}}, false},
		{"one not on the new credential", []Consumer{idle("pet"), {App: "shop", ID: "a", BrokerOnly: true, Reason: "runs revision 3"}}, false},
		{"a consumer application with no agent", []Consumer{idle("pet")}, false},
		{"another application's broker does not count", []Consumer{idle("pet"), idle("shop"), {App: "other", ID: "z", OldSessions: 9}}, true},
		{"nobody", nil, false},
	}
	for _, tt := range tests {
		if got := x.sessionsEnded(Rollout{Consumers: tt.cs}); got != tt.want {
			t.Errorf("%s: sessionsEnded = %v, want %v", tt.name, got, tt.want)
		}
	}
}
