package sdk

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed call: the gRPC code and the server's message, which
// already names the operation and path ("get /app/x/db: not found") and
// says what to do. status.FromError and status.Code work on it, and
// errors.Is matches it against the sentinel of the same code:
//
//	if errors.Is(err, sdk.ErrFailedPrecondition) { /* CAS lost: re-read */ }
type Error struct {
	Code    codes.Code
	Message string

	st    *status.Status // as received, with any details
	cause error          // the context error when the caller's ctx ended the call
}

// Sentinel errors. The first group is what a failed call matches with
// errors.Is: each matches every *Error with its code. The second is what
// New returns, wrapped with detail, for a Config it cannot use.
var (
	ErrNotFound           = &Error{Code: codes.NotFound, Message: "not found"}
	ErrInvalidArgument    = &Error{Code: codes.InvalidArgument, Message: "invalid argument"}
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition, Message: "failed precondition (revision changed)"}
	ErrPermissionDenied   = &Error{Code: codes.PermissionDenied, Message: "permission denied"}
	ErrUnauthenticated    = &Error{Code: codes.Unauthenticated, Message: "unauthenticated"}
	ErrUnavailable        = &Error{Code: codes.Unavailable, Message: "unavailable"}
	ErrOutOfRange         = &Error{Code: codes.OutOfRange, Message: "out of range (revision compacted)"}

	ErrNoAddr    = errors.New("sdk: Config.Addr is required (graftd's host:port, e.g. 127.0.0.1:7420)")
	ErrNoToken   = errors.New("sdk: Config.Token is required")
	ErrBadToken  = errors.New("sdk: Config.Token contains whitespace or control characters (a trailing newline read from a file?)")
	ErrPlaintext = errors.New("sdk: plaintext connection to a non-loopback address refused; set Config.TLS, or Config.Insecure to allow it")
)

func (e *Error) Error() string { return e.Message }

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap returns context.Canceled or context.DeadlineExceeded when the
// caller's context ended the call, so errors.Is works for those too.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus lets status.FromError and status.Code see the status.
func (e *Error) GRPCStatus() *status.Status {
	if e.st != nil {
		return e.st
	}
	return status.New(e.Code, e.Message)
}

// wrap turns an error from a gRPC call into an *Error.
func wrap(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	e := &Error{Code: st.Code(), Message: st.Message(), st: st}
	if cerr := ctx.Err(); cerr != nil && (e.Code == codes.Canceled || e.Code == codes.DeadlineExceeded) {
		e.cause = cerr
	}
	return e
}

// invalidArgument is a check the SDK makes before calling, reported the
// way the server would report it.
func invalidArgument(msg string) error {
	return &Error{Code: codes.InvalidArgument, Message: msg}
}

var _ interface{ GRPCStatus() *status.Status } = (*Error)(nil)

// code returns the gRPC code of err, codes.OK for nil.
func code(err error) codes.Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}
