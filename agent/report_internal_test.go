package agent

import (
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// A refusal of the agent's reports because another live agent holds its
// id is logged once, saying what to do, however many heartbeats it lasts;
// so is each change after it.
func TestReportRefusalIsLoggedOncePerChange(t *testing.T) {
	logs := &testenv.Buffer{}
	r := &reporter{id: "web-1", app: "mp", instance: "i-1", log: slog.New(slog.NewTextHandler(logs, nil))}
	taken := &sdk.Error{Code: codes.AlreadyExists, Message: "agent id mp/web-1 is held by another live agent process"}
	away := &sdk.Error{Code: codes.Unavailable, Message: "unavailable"}
	for _, err := range []error{nil, taken, taken, taken, taken, nil, nil, taken, away, away, taken, nil} {
		r.note(err)
	}
	out := logs.String()
	for want, n := range map[string]int{
		"another live agent reports under the same id; give each agent its own (id: or --id)": 3,
		"graftd accepts this agent's reports again":                                           2,
		"cannot report to graftd":                                                             1,
	} {
		if got := strings.Count(out, want); got != n {
			t.Errorf("%q logged %d times, want %d:\n%s", want, got, n, out)
		}
	}
	if !strings.Contains(out, "id=web-1") || !strings.Contains(out, "instance=i-1") {
		t.Errorf("the refusal does not name the id and instance:\n%s", out)
	}
}
