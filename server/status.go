package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/audit"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

// toStatus maps a domain error to the gRPC status a client sees. The
// message is the error's own text, which says what failed on which path and
// what to do; context errors pass through as their own codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !isWrapped(err) {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, store.ErrInvalidPath), errors.Is(err, store.ErrInvalidArgument), errors.Is(err, errInvalidArgument),
		errors.Is(err, audit.ErrInvalidFilter):
		code = codes.InvalidArgument
	case errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrValueTooLarge):
		code = codes.InvalidArgument
	case errors.Is(err, replicator.ErrRuleConflict), errors.Is(err, replicator.ErrSourceInUse), errors.Is(err, store.ErrDestination), errors.Is(err, store.ErrDestinationNotEmpty):
		code = codes.FailedPrecondition
	case errors.Is(err, replicator.ErrInvalidRule):
		code = codes.InvalidArgument
	case errors.Is(err, store.ErrRevisionChanged):
		code = codes.FailedPrecondition
	case errors.Is(err, store.ErrCompacted):
		code = codes.OutOfRange
	case errors.Is(err, store.ErrContention):
		code = codes.Aborted
	case errors.Is(err, store.ErrDecrypt):
		code = codes.DataLoss
	case errors.Is(err, errPermissionDenied):
		code = codes.PermissionDenied
	case errors.Is(err, audit.ErrClosed), isUnavailable(err):
		code = codes.Unavailable
	}
	return status.Error(code, err.Error())
}

var (
	errInvalidArgument  = errors.New("invalid argument")
	errPermissionDenied = errors.New("permission denied")
)

// invalidArgument is a bad request caught by the server itself; its
// message is the whole story, without a category prefix.
type invalidArgument struct{ msg string }

func (e *invalidArgument) Error() string        { return e.msg }
func (e *invalidArgument) Is(target error) bool { return target == errInvalidArgument }

func invalid(format string, args ...any) error {
	return &invalidArgument{msg: fmt.Sprintf(format, args...)}
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
