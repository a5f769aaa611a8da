package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/audit"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/store"
)

// Authorizer decides whether a principal may do an action on a path.
type Authorizer interface {
	Decide(p acl.Principal, act acl.Action, path string) acl.Decision
}

// Auditor records requests. Append must have stored the record when it
// returns; AppendAsync may store it later.
type Auditor interface {
	Append(ctx context.Context, r audit.Record) error
	AppendAsync(r audit.Record)
	HMAC(value []byte) string
	Query(ctx context.Context, f audit.Filter) ([]audit.Record, error)
}

// access is what one request does, for authorization and audit: the one
// table every rpc goes through.
type access struct {
	action acl.Action
	path   string
	// write requests are audited before they run (an audit failure stops
	// them) and again with their outcome.
	write bool
	// perItem requests are authorized by their handler path by path
	// (listings, watches, prefix restores); the caller only ever sees
	// paths it may see.
	perItem bool
	// anyone may make the request once authenticated (WhoAmI).
	anyone bool
	hmac   []byte
}

// adminPath is the path admin actions are checked against.
const adminPath = "/"

func accessOf(req any) access {
	switch r := req.(type) {
	case *graftv1.GetRequest:
		return access{action: acl.ActionRead, path: r.GetPath()}
	case *graftv1.HistoryRequest:
		return access{action: acl.ActionRead, path: r.GetPath()}
	case *graftv1.PutRequest:
		return access{action: acl.ActionWrite, path: r.GetPath(), write: true, hmac: r.GetValue()}
	case *graftv1.DeleteRequest:
		return access{action: acl.ActionDelete, path: r.GetPath(), write: true}
	case *graftv1.RestoreRequest:
		return access{action: acl.ActionWrite, path: r.GetPath(), write: true}
	case *graftv1.RestorePrefixRequest:
		return access{action: acl.ActionWrite, path: r.GetPrefix(), write: !r.GetDryRun(), perItem: true}
	case *graftv1.ListRequest:
		return access{action: acl.ActionList, path: r.GetPrefix(), perItem: true}
	case *graftv1.WatchRequest:
		return access{action: acl.ActionList, path: r.GetPrefix(), perItem: true}
	case *graftv1.ShareRequest:
		return access{action: acl.ActionShare, path: r.GetSource(), write: true}
	case *graftv1.UnshareRequest:
		// The handler checks share on the rule's source.
		return access{action: acl.ActionShare, write: true, perItem: true}
	case *graftv1.ListRulesRequest, *graftv1.GetRuleRequest:
		// Rules are shown to who may list their source or a destination.
		return access{action: acl.ActionList, perItem: true}
	case *graftv1.ReplicationStatusRequest:
		return access{action: acl.ActionRead, path: r.GetPath()}
	case *graftv1.WhoAmIRequest:
		return access{anyone: true}
	case *graftv1.ReencryptSweepRequest, *graftv1.CreateTokenRequest, *graftv1.RevokeTokenRequest,
		*graftv1.PutPolicyRequest, *graftv1.DeletePolicyRequest, *graftv1.InitPoliciesRequest:
		return access{action: acl.ActionAdmin, path: adminPath, write: true}
	}
	// Everything else (keyring status, token and policy reads, audit
	// queries) is an admin read.
	return access{action: acl.ActionAdmin, path: adminPath}
}

// may reports whether the caller in ctx may do act on path.
func (s *Server) may(ctx context.Context, act acl.Action, path string) bool {
	return s.access.Decide(principal(ctx), act, path).Allowed
}

// authorize checks one request and returns the PermissionDenied status
// for a denial.
func (s *Server) authorize(ctx context.Context, a access) error {
	if a.anyone || a.perItem {
		return nil
	}
	p := principal(ctx)
	d := s.access.Decide(p, a.action, a.path)
	if err := d.Err(p, a.action, a.path); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
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
func (s *Server) record(ctx context.Context, method string, a access, result string, err error) audit.Record {
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
	if a.hmac != nil {
		r.ValueHMAC = s.audit.HMAC(a.hmac)
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

// verbs names the KV rpcs as their errors do ("get /x: ..."); keyPaths
// are the ones whose path must be a key, not the root.
var (
	verbs    = map[string]string{"Share": "share", "ReplicationStatus": "status", "Get": "get", "History": "history", "Put": "put", "Delete": "delete", "Restore": "restore", "RestorePrefix": "restore", "List": "list", "Watch": "watch"}
	keyPaths = map[string]bool{"Share": true, "ReplicationStatus": true, "Get": true, "History": true, "Put": true, "Delete": true, "Restore": true}
)

// checkPath rejects a non-canonical path before any policy sees it:
// patterns are matched against canonical paths only, so "/app/me/../x"
// never reaches a matcher.
func checkPath(method, path string) error {
	verb, ok := verbs[method]
	if !ok {
		return nil
	}
	parse := store.ParsePrefix
	if keyPaths[method] {
		parse = store.ParsePath
	}
	if _, err := parse(path); err != nil {
		return toStatus(fmt.Errorf("%s %s: %w", verb, path, err))
	}
	return nil
}

// guard runs one unary request through authorization and audit.
func (s *Server) guard(ctx context.Context, method string, req any, handler grpc.UnaryHandler) (any, error) {
	a := accessOf(req)
	if err := checkPath(method, a.path); err != nil {
		return nil, err
	}
	if err := s.authorize(ctx, a); err != nil {
		s.audit.AppendAsync(s.record(ctx, method, a, "denied", err))
		return nil, err
	}
	if a.write {
		if err := s.audit.Append(ctx, s.record(ctx, method, a, "allowed", nil)); err != nil {
			s.log.Error("audit log unavailable; refusing a write", "method", method, "path", a.path, "err", err)
			return nil, status.Errorf(codes.Unavailable, "%s %s: the audit log is unavailable, so nothing was changed; retry shortly", lower(method), a.path)
		}
	}
	resp, err := handler(ctx, req)
	rec := s.record(ctx, method, a, "ok", err)
	rec.Revision = revisionOf(resp)
	if !a.write {
		s.audit.AppendAsync(rec)
		return resp, err
	}
	if aerr := s.audit.Append(context.WithoutCancel(ctx), rec); aerr != nil {
		s.log.Error("audit log unavailable after a write", "method", method, "path", a.path, "revision", rec.Revision, "err", aerr)
		if err == nil {
			return nil, status.Errorf(codes.Unavailable, "%s %s: done at revision %d, but its audit record could not be written; check the audit log", lower(method), a.path, rec.Revision)
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
