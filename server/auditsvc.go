package server

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/graft-sh/graft/audit"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/store"
)

// QueryAudit implements graftv1.AuditServiceServer.
func (s *Server) QueryAudit(ctx context.Context, req *graftv1.QueryAuditRequest) (*graftv1.QueryAuditResponse, error) {
	if l := req.GetLimit(); l < 0 || l > audit.MaxQueryLimit {
		return nil, toStatus(invalid("audit: limit %d: want 1 to %d (0 means the default, %d)", l, audit.MaxQueryLimit, audit.DefaultQueryLimit))
	}
	if p := req.GetPathPrefix(); p != "" && p != "/" {
		if _, err := store.ParsePrefix(strings.TrimSuffix(p, "/")); err != nil {
			return nil, toStatus(fmt.Errorf("audit --path %s: %w", store.ShortPath(p), err))
		}
	}
	f := audit.Filter{PathPrefix: req.GetPathPrefix(), Principal: req.GetPrincipal(), Limit: int(req.GetLimit())}
	if req.GetSince() != nil {
		f.Since = req.GetSince().AsTime()
	}
	recs, err := s.audit.Query(ctx, f)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.QueryAuditResponse{Records: make([]*graftv1.AuditRecord, 0, len(recs))}
	for _, r := range recs {
		resp.Records = append(resp.Records, &graftv1.AuditRecord{
			Time:      timestamppb.New(r.Time),
			RequestId: r.RequestID,
			Principal: r.Principal,
			Method:    r.Method,
			Action:    r.Action,
			Path:      r.Path,
			Result:    r.Result,
			Code:      r.Code,
			Revision:  r.Revision,
			Peer:      r.Peer,
			ValueHmac: r.ValueHMAC,
			Detail:    r.Detail,
		})
	}
	return resp, nil
}
