package cmdline

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"

	"github.com/graft-sh/graft/sdk"
)

// ErrorLine turns any error into the one line a program prints after its
// name ("graft: "). A server error is its status message, which already names the
// operation and path; failures to connect or authenticate add what to do.
func (g *Globals) ErrorLine(err error) string {
	var msg string
	var se *sdk.Error
	switch {
	case errors.As(err, &se):
		msg = g.statusLine(se)
	case errors.Is(err, sdk.ErrPlaintext):
		msg = fmt.Sprintf("refusing a plaintext connection to %s, which is not a loopback address: pass --ca-file (GRAFT_CA_FILE) to use TLS, or --insecure (GRAFT_INSECURE=1) to send the token in the clear", g.Addr)
	case errors.Is(err, sdk.ErrBadToken):
		msg = "the token contains whitespace or control characters; check " + g.tokenSource()
	case errors.Is(err, context.Canceled):
		msg = "interrupted"
	default:
		msg = err.Error()
	}
	// One line, whatever the message; cobra's suggestions span several.
	if head, sugg, ok := strings.Cut(msg, "\n\nDid you mean this?\n"); ok {
		msg = head + "; did you mean " + strings.Join(strings.Fields(sugg), " or ") + "?"
	}
	// A server message listing several problems (a policy with more than
	// one bad line) has one per line: keep them apart.
	var parts []string
	for line := range strings.Lines(msg) {
		if line = strings.Join(strings.Fields(line), " "); line != "" {
			parts = append(parts, line)
		}
	}
	msg = strings.Join(parts, "; ")
	// Defence in depth: no message should hold the token, or an argument
	// that may be one, but never print them. (A token too short to be
	// real would only garble the message.)
	for _, secret := range append([]string{g.Token}, g.Secrets...) {
		if len(secret) >= 8 {
			msg = strings.ReplaceAll(msg, secret, "[token]")
		}
	}
	return msg
}

func (g *Globals) statusLine(e *sdk.Error) string {
	switch e.Code {
	case codes.Unavailable:
		return fmt.Sprintf("cannot reach graftd at %s: %s; is it running? (make run)", g.Addr, transportReason(e.Message))
	case codes.Unauthenticated:
		return e.Message + "; check " + g.tokenSource()
	case codes.DeadlineExceeded:
		if errors.Is(e, context.DeadlineExceeded) {
			return fmt.Sprintf("graftd at %s did not answer within %s; is it running? (--timeout sets the limit)", g.Addr, g.Timeout)
		}
	case codes.Canceled:
		if errors.Is(e, context.Canceled) {
			return "interrupted"
		}
	}
	return e.Message
}

// transportReason shortens gRPC's connection error
//
//	connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:7420: connect: connection refused"
//
// to its cause, "connect: connection refused". Other messages pass as they are.
func transportReason(msg string) string {
	if i := strings.LastIndex(msg, `desc = "`); i >= 0 {
		msg = strings.TrimSuffix(msg[i+len(`desc = "`):], `"`)
	}
	msg = strings.TrimPrefix(msg, "transport: ")
	msg = strings.TrimPrefix(msg, "Error while dialing: ")
	msg = strings.TrimPrefix(msg, "error while dialing: ")
	if rest, ok := strings.CutPrefix(msg, "dial tcp "); ok {
		// "dial tcp ADDR: connect: ..." repeats the address already shown.
		if i := strings.Index(rest, ": "); i >= 0 {
			msg = rest[i+2:]
		}
	}
	return msg
}

// tokenSource names where the token in use came from: the flag or the
// variable.
func (g *Globals) tokenSource() string {
	if g.tokenFrom == "" {
		return "GRAFT_TOKEN"
	}
	return g.tokenFrom
}
