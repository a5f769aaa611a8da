package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/audit"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

func TestErrorTable(t *testing.T) {
	etcdDown := fmt.Errorf("get /x: %w", status.Error(codes.Unavailable, "etcdserver: no leader"))
	tests := []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("get /x: %w", context.Canceled), codes.Canceled},
		{&acl.DeniedError{Principal: "app:x", Action: acl.ActionRead, Path: "/dba/x"}, codes.PermissionDenied},
		{fmt.Errorf("restore /: %w", &acl.DeniedError{Principal: "app:x", Action: acl.ActionWrite, Path: "/"}), codes.PermissionDenied},
		{fmt.Errorf("%w at 2026-01-01T00:00:00Z", acl.ErrExpiredToken), codes.Unauthenticated},
		{acl.ErrUnknownToken, codes.Unauthenticated},
		{acl.ErrNoToken, codes.Unauthenticated},
		{fmt.Errorf("%w: no SPIFFE ID", acl.ErrUntrustedCert), codes.Unauthenticated},
		{acl.ErrNotReady, codes.Unavailable},
		{fmt.Errorf("policy put: %w", acl.ErrInvalidPolicy), codes.InvalidArgument},
		{fmt.Errorf("get /x: %w", store.ErrNotFound), codes.NotFound},
		{&store.RevisionMismatchError{Expected: 1, Current: 2}, codes.FailedPrecondition},
		{&store.DestinationError{Path: "/app/a/replicated/x"}, codes.FailedPrecondition},
		{&replicator.SourceInUseError{Path: "/dba/x", Copies: []string{"/app/a/replicated/x (rule r-1)"}}, codes.FailedPrecondition},
		{&replicator.RuleError{Msg: "bad"}, codes.InvalidArgument},
		// A share that stands but could not fill: Unavailable, whatever
		// the cause, so the caller looks again.
		{&replicator.IncompleteError{Msg: "rule r-1 created, but ...", Err: store.ErrDecrypt}, codes.Unavailable},
		{fmt.Errorf("read: %w", store.ErrDecrypt), codes.DataLoss},
		{&store.CompactedError{Requested: 1, Oldest: 5}, codes.OutOfRange},
		{fmt.Errorf("put /x: %w", store.ErrContention), codes.Aborted},
		{audit.ErrClosed, codes.Unavailable},
		{invalid("restore /x: give the revision"), codes.InvalidArgument},
		{unavailable("watch /x: graftd is shutting down"), codes.Unavailable},
		{etcdDown, codes.Unavailable},
		{errors.New("something else"), codes.Internal},
	}
	for _, tt := range tests {
		st := status.Convert(toStatus(tt.err))
		if st.Code() != tt.code || st.Message() != tt.err.Error() {
			t.Errorf("toStatus(%q) = %v %q, want %v with the error's own message", tt.err, st.Code(), st.Message(), tt.code)
		}
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) is not nil")
	}
}
