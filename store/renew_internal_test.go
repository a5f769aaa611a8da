package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{io.EOF, true},
		{fmt.Errorf("recv: %w", io.EOF), true},
		{status.Error(codes.Unavailable, "error reading from server: EOF"), true},
		{rpctypes.ErrGRPCNoLeader, true},
		{rpctypes.ErrGRPCLeaderChanged, true},
		{rpctypes.ErrGRPCTimeout, true},
		{status.Error(codes.Internal, "stream terminated by RST_STREAM"), true},
		{status.Error(codes.Unknown, notPrimary), true},
		{status.Error(codes.Unknown, "something else"), false},
		{rpctypes.ErrGRPCPermissionDenied, false},
		{rpctypes.ErrGRPCInvalidAuthToken, false},
		{status.Error(codes.Canceled, "grpc: the client connection is closing"), false},
		{context.Canceled, false},
		{errors.New("unexpected"), false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
