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
