package sdk

import (
	"context"
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// AuditFilter selects audit records. The zero value selects the newest
// 100 records.
type AuditFilter struct {
	PathPrefix string    // only records at this path or below it (segment-aware)
	Principal  string    // only records of this principal
	Since      time.Time // only records at or after this time; zero for all
	Limit      int       // at most this many, the newest; 0 for graftd's default (100)
}

// AuditRecord is one audited request. It never holds a value: a written
// value appears only as ValueHMAC, to correlate writes of the same value.
type AuditRecord struct {
	Time      time.Time
	RequestID string // shared by the records of one request
	Principal string
	Method    string // the rpc, e.g. "Put"
	Action    string // the action checked, e.g. "write"
	Path      string
	Result    string // allowed, denied, ok or error
	Code      string // the gRPC code of an error
	Revision  int64  // the store revision a write produced
	Peer      string // the caller's address
	ValueHMAC string // HMAC-SHA256 (hex) of a written value under the cluster's audit key
	Detail    string
}

// QueryAudit returns the audit records f selects, oldest first. Needs the
// admin action.
func (c *Client) QueryAudit(ctx context.Context, f AuditFilter) ([]AuditRecord, error) {
	if f.Limit < 0 || f.Limit > math.MaxInt32 {
		return nil, invalidArgument(fmt.Sprintf("audit: limit %d: want 1 to 10000 (0 means the default, 100)", f.Limit))
	}
	req := &graftv1.QueryAuditRequest{PathPrefix: f.PathPrefix, Principal: f.Principal, Limit: int32(f.Limit)}
	if !f.Since.IsZero() {
		req.Since = timestamppb.New(f.Since)
	}
	resp, err := c.audit.QueryAudit(ctx, req)
	if err != nil {
		return nil, wrap(ctx, err)
	}
	recs := make([]AuditRecord, 0, len(resp.GetRecords()))
	for _, r := range resp.GetRecords() {
		recs = append(recs, AuditRecord{
			Time:      timeFrom(r.GetTime()),
			RequestID: r.GetRequestId(),
			Principal: r.GetPrincipal(),
			Method:    r.GetMethod(),
			Action:    r.GetAction(),
			Path:      r.GetPath(),
			Result:    r.GetResult(),
			Code:      r.GetCode(),
			Revision:  r.GetRevision(),
			Peer:      r.GetPeer(),
			ValueHMAC: r.GetValueHmac(),
			Detail:    r.GetDetail(),
		})
	}
	return recs, nil
}
