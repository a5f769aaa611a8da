package server

import (
	"context"
	"errors"
	"fmt"
	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/leases"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/audit"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/rollout"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/rotation/registry"
	"github.com/graft-sh/graft/store"
)

// errorCodes is the one table in which domain errors become the gRPC
// codes clients see, in the spirit of etcd's rpctypes: handlers return
// domain errors and nothing else, and toStatus looks them up here. The
// first row the error matches (errors.Is) decides, so more specific rows
// come first. The message is always the error's own text, which says what
// failed on which path and what to do.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	// Done in part, the rest to follow or to retry: the caller should
	// look again shortly.
	{replicator.ErrIncomplete, codes.Unavailable},
	{errUnavailable, codes.Unavailable},
	{audit.ErrClosed, codes.Unavailable},
	{acl.ErrNotReady, codes.Unavailable},

	{acl.ErrNoToken, codes.Unauthenticated},
	{acl.ErrUnknownToken, codes.Unauthenticated},
	{acl.ErrExpiredToken, codes.Unauthenticated},
	{acl.ErrUntrustedCert, codes.Unauthenticated},
	{acl.ErrPermissionDenied, codes.PermissionDenied},

	{store.ErrInvalidPath, codes.InvalidArgument},
	{store.ErrInvalidArgument, codes.InvalidArgument},
	{store.ErrValueTooLarge, codes.InvalidArgument},
	{errInvalidArgument, codes.InvalidArgument},
	{audit.ErrInvalidFilter, codes.InvalidArgument},
	{acl.ErrInvalidPolicy, codes.InvalidArgument},
	{acl.ErrInvalidPattern, codes.InvalidArgument},
	{replicator.ErrInvalidRule, codes.InvalidArgument},
	{rollout.ErrInvalid, codes.InvalidArgument},
	{rotation.ErrInvalid, codes.InvalidArgument},
	{dbcred.ErrInvalidRole, codes.InvalidArgument},
	{dbcred.ErrNotRole, codes.FailedPrecondition},
	{leases.ErrDenied, codes.PermissionDenied},
	{leases.ErrNotFound, codes.NotFound},
	{leases.ErrQuota, codes.ResourceExhausted},
	{leases.ErrState, codes.FailedPrecondition},
	{leases.ErrDatabase, codes.Unavailable},

	{store.ErrNotFound, codes.NotFound},

	{acl.ErrLastAdmin, codes.FailedPrecondition},
	{replicator.ErrRuleConflict, codes.FailedPrecondition},
	{replicator.ErrSourceInUse, codes.FailedPrecondition},
	{store.ErrDestination, codes.FailedPrecondition},
	{store.ErrDestinationNotEmpty, codes.FailedPrecondition},
	{store.ErrRevisionChanged, codes.FailedPrecondition},
	{registry.ErrConflict, codes.FailedPrecondition},
	{rollout.ErrAgentConflict, codes.FailedPrecondition},
	{rollout.ErrTooManyAgents, codes.ResourceExhausted},
	{store.ErrWatchBehind, codes.ResourceExhausted},
	{store.ErrWatchEnded, codes.Unavailable},

	{store.ErrCompacted, codes.OutOfRange},
	{store.ErrContention, codes.Aborted},
	{store.ErrDecrypt, codes.DataLoss},
}

// toStatus maps a domain error to the gRPC status a client sees. A status
// error passed through as it is (a client stream's) keeps its code; an
// error that only wraps one somewhere (etcd client errors do) is mapped,
// with etcd being unreachable or leaderless as Unavailable: retry.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !isWrapped(err) {
		return err
	}
	code := codes.Internal
	for _, row := range errorCodes {
		if errors.Is(err, row.err) {
			code = row.code
			break
		}
	}
	if code == codes.Internal && isUnavailable(err) {
		code = codes.Unavailable
	}
	return status.Error(code, err.Error())
}

// The server's own errors, for what only the transport knows: a request
// the server itself finds malformed, and a service that cannot answer now.
var (
	errInvalidArgument = errors.New("invalid argument")
	errUnavailable     = errors.New("unavailable")
)

// serverError is one of the server's own errors; its message is the whole
// story, without a category prefix.
type serverError struct {
	msg  string
	kind error
}

func (e *serverError) Error() string        { return e.msg }
func (e *serverError) Is(target error) bool { return target == e.kind }

// invalid is a bad request caught by the server itself.
func invalid(format string, args ...any) error {
	return &serverError{msg: fmt.Sprintf(format, args...), kind: errInvalidArgument}
}

// unavailable is a request the server cannot serve now; the client should
// retry (or resume) shortly.
func unavailable(format string, args ...any) error {
	return &serverError{msg: fmt.Sprintf(format, args...), kind: errUnavailable}
}

// isWrapped tells a status error passed straight through from one that
// merely wraps a status somewhere in its chain (etcd client errors do).
func isWrapped(err error) bool { return errors.Unwrap(err) != nil }

// isUnavailable reports errors that mean etcd could not be reached or has
// no leader: the client should retry.
func isUnavailable(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if st, ok := status.FromError(e); ok {
			switch st.Code() {
			case codes.Unavailable, codes.DeadlineExceeded:
				return true
			}
		}
	}
	return false
}
