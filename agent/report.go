package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/graft-sh/graft/sdk"
)

// Reports: after every render, when the connection to graftd is made
// again, and every reportEvery. graftd keeps a report while the
// connection it came over is open, and reportTTL after it closed, so an
// agent that died drops out of `graft agents ls` and rollout status
// within it; the periodic report only retries one that failed and
// restores one graftd lost.
const (
	reportEvery = 30 * time.Second
	reportTTL   = 15 * time.Second
)

// reporterConfig is what the reporter is given.
type reporterConfig struct {
	Conn *connection
	Log  *slog.Logger
	// ID, App and Host name the agent in every report.
	ID, App, Host string
	// Addr is the address of the agent's HTTP endpoints ("" without).
	Addr string
}

// reporter sends the agent's reports to graftd, under its id and a
// random instance of this process, and logs how they go once per change.
type reporter struct {
	conn                *connection
	log                 *slog.Logger
	id, app, host, addr string
	// instance is the random id of this agent process, in every report:
	// graftd refuses a report under an id another live process holds.
	instance string
	// state is how the last report went ("" sent, "failing" or
	// "refused"), to log once per change and not every heartbeat.
	state string
}

func newReporter(c reporterConfig) *reporter {
	return &reporter{conn: c.Conn, log: c.Log, id: c.ID, app: c.App, host: c.Host, addr: c.Addr, instance: newInstance()}
}

// send reports rep, under the agent's names. A failure is logged once per
// outage; the next heartbeat tries again.
func (r *reporter) send(ctx context.Context, rep sdk.AgentReport) {
	rep.ID, rep.App, rep.Host, rep.HTTPAddress, rep.Instance = r.id, r.app, r.host, r.addr, r.instance
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := r.conn.call(rctx, func(c *sdk.Client) error { return c.Report(rctx, rep, reportTTL) })
	if ctx.Err() != nil {
		return
	}
	r.note(err)
}

// note logs how a report went when that changed since the last
// one: reports go again and again, the log says each change once. A refusal
// because another live agent holds the id is its own state, with what to
// do; the agent keeps rendering and reloading, and keeps trying.
func (r *reporter) note(err error) {
	state := ""
	switch {
	case err == nil:
	case idTaken(err):
		state = "refused"
	default:
		state = "failing"
	}
	if state == r.state {
		return
	}
	prev := r.state
	r.state = state
	switch state {
	case "refused":
		r.log.Error("graftd refuses this agent's reports: another live agent reports under the same id; give each agent its own (id: or --id), or stop the other one. This agent goes on rendering and tries again every heartbeat",
			"id", r.id, "app", r.app, "instance", r.instance, "err", err)
	case "failing":
		r.log.Warn("cannot report to graftd; retrying every heartbeat", "err", err)
	default:
		if prev == "refused" {
			r.log.Info("graftd accepts this agent's reports again", "id", r.id)
		} else {
			r.log.Info("reporting to graftd again")
		}
	}
}

// idTaken reports whether graftd refused a report because another live
// agent process holds its id: AlreadyExists, or a refusal that names the
// instance.
func idTaken(err error) bool {
	var e *sdk.Error
	return errors.As(err, &e) && (e.Code == codes.AlreadyExists ||
		e.Code == codes.FailedPrecondition && strings.Contains(e.Message, "instance"))
}

// newInstance returns a random id for this agent process.
func newInstance() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
