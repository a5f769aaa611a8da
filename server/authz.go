package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/audit"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// Authorizer decides whether a principal may do an action on a path.
type Authorizer interface {
	Decide(p acl.Principal, act acl.Action, path string) acl.Decision
	// MayBelow reports whether p may do act somewhere at or below prefix.
	MayBelow(p acl.Principal, act acl.Action, prefix string) bool
	// Reachable returns the subtrees at or below prefix where p may do act
	// somewhere; reads of a prefix read, and decrypt, only these.
	Reachable(p acl.Principal, act acl.Action, prefix string) []string
}

var _ Authorizer = (*acl.Engine)(nil)

// Auditor records requests. Append must have stored the record when it
// returns; AppendAsync may store it later.
type Auditor interface {
	Append(ctx context.Context, r audit.Record) error
	AppendAsync(r audit.Record)
	HMAC(value []byte) string
	Query(ctx context.Context, f audit.Filter) ([]audit.Record, error)
}

var _ Auditor = (*audit.Log)(nil)

// may reports whether the caller in ctx may do act on path.
func (s *Server) may(ctx context.Context, act acl.Action, path string) bool {
	return s.access.Decide(principal(ctx), act, path).Allowed
}

// authorize checks one request; a denial is an *acl.DeniedError.
func (s *Server) authorize(ctx context.Context, a request) error {
	p := principal(ctx)
	if a.below && !s.access.MayBelow(p, a.action, a.path) {
		return &acl.DeniedError{Principal: p.Name, Action: a.action, Path: a.path}
	}
	if a.anyone || a.perItem {
		return nil
	}
	return s.access.Decide(p, a.action, a.path).Err(p, a.action, a.path)
}

type requestIDKey struct{}

func newRequestID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// record builds the audit record of a request.
func (s *Server) record(ctx context.Context, method string, a request, result string, err error) audit.Record {
	r := audit.Record{
		RequestID: requestID(ctx),
		Principal: principal(ctx).Name,
		Method:    method,
		Action:    string(a.action),
		Path:      a.path,
		Result:    result,
	}
	if a.anyone {
		r.Action = "whoami"
	}
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		r.Peer = pr.Addr.String()
	}
	if a.value != nil {
		r.ValueHMAC = s.audit.HMAC(a.value)
	}
	if err != nil {
		r.Code = status.Code(err).String()
		if r.Result != "denied" {
			r.Result = "error"
		}
	}
	return r
}

// revisionOf extracts the store revision a write response carries.
func revisionOf(resp any) int64 {
	switch r := resp.(type) {
	case interface{ GetEntry() *graftv1.Entry }:
		return r.GetEntry().GetRevision()
	case *graftv1.DeleteResponse:
		return r.GetRevision()
	}
	return 0
}

// guard runs one unary request through authorization and audit.
func (s *Server) guard(ctx context.Context, fullMethod string, req any, handler grpc.UnaryHandler) (any, error) {
	method := methodName(fullMethod)
	a, err := accessOf(fullMethod, req)
	if err == nil {
		err = a.checkPath()
	}
	if err != nil {
		return nil, toStatus(err)
	}
	if err := s.authorize(ctx, a); err != nil {
		err = toStatus(err)
		s.audit.AppendAsync(s.record(ctx, method, a, "denied", err))
		return nil, err
	}
	if a.write {
		if err := s.audit.Append(ctx, s.record(ctx, method, a, "allowed", nil)); err != nil {
			s.log.Error("audit log unavailable; refusing a write", "method", method, "path", a.path, "err", err)
			return nil, toStatus(unavailable("%s %s: the audit log is unavailable, so nothing was changed; retry shortly", lower(method), a.path))
		}
	}
	note := &auditNote{}
	resp, err := handler(context.WithValue(ctx, auditNoteKey{}, note), req)
	rec := s.record(ctx, method, a, "ok", err)
	rec.Revision = revisionOf(resp)
	if note.path != "" {
		rec.Path, rec.Detail = note.path, note.detail
	}
	if !a.write {
		s.audit.AppendAsync(rec)
		return resp, err
	}
	if aerr := s.audit.Append(context.WithoutCancel(ctx), rec); aerr != nil {
		s.log.Error("audit log unavailable after a write", "method", method, "path", a.path, "revision", rec.Revision, "err", aerr)
		if err == nil {
			return nil, toStatus(unavailable("%s %s: done at revision %d, but its audit record could not be written; check the audit log", lower(method), a.path, rec.Revision))
		}
	}
	return resp, err
}

func lower(method string) string {
	if method == "" {
		return method
	}
	b := []byte(method)
	if b[0] >= 'A' && b[0] <= 'Z' {
		b[0] += 'a' - 'A'
	}
	return string(b)
}

// auditNote is what a handler adds to its call's audit record: for rpcs
// that name a thing rather than a path (a rotation), the path it acts
// on, and a line for a human.
type auditNote struct{ path, detail string }

type auditNoteKey struct{}

// noteAudit sets the path and detail of the call's audit record; detail
// must never hold a secret.
func noteAudit(ctx context.Context, path, detail string) {
	if n, ok := ctx.Value(auditNoteKey{}).(*auditNote); ok {
		n.path, n.detail = path, detail
	}
}
