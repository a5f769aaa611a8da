package server

import (
	"context"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/grpclimit"
)

// Limits bound what one call, one connection and one principal may make
// graftd hold. Zero fields take the defaults below.
type Limits struct {
	// MaxRequestBytes bounds one request of most rpcs.
	MaxRequestBytes int
	// MaxLargeRequestBytes bounds one request of the rpcs that carry
	// many paths or values at once (largeRequests): a rule with a
	// hundred thousand destinations is about 5 MB. grpc-go has one
	// receive limit per server, so it is also the most any request can
	// make graftd read before the per-rpc limit refuses it.
	MaxLargeRequestBytes int
	// MaxStreamsPerConn bounds the calls one connection has open at once
	// (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
	MaxStreamsPerConn uint32
	// MaxCallsPerPrincipal bounds the calls other than watches that one
	// principal has open at once, over all its connections.
	MaxCallsPerPrincipal int
	// MaxWatchesPerPrincipal bounds the watch streams one principal has
	// open at once, over all its connections.
	MaxWatchesPerPrincipal int
	// MaxProbes bounds the unauthenticated health checks open at once.
	MaxProbes int
}

// Default limits.
const (
	DefaultMaxRequestBytes        = grpclimit.MaxRequestBytes / 2
	DefaultMaxLargeRequestBytes   = grpclimit.MaxRequestBytes
	DefaultMaxStreamsPerConn      = 256
	DefaultMaxCallsPerPrincipal   = 32
	DefaultMaxWatchesPerPrincipal = 1024
	DefaultMaxProbes              = 64
)

// MaxResponseBytes bounds one response: a listing of many wide rules.
// Responses are built by graftd from what is stored, so their size is not
// the caller's to choose.
const MaxResponseBytes = grpclimit.MaxResponseBytes

// largeRequests are the rpcs allowed MaxLargeRequestBytes: a share with
// many destinations, a tree written at once.
var largeRequests = map[string]bool{
	graftv1.ReplicationService_Share_FullMethodName: true,
	graftv1.KVService_PutTree_FullMethodName:        true,
}

func (l Limits) withDefaults() Limits {
	set := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	set(&l.MaxRequestBytes, DefaultMaxRequestBytes)
	set(&l.MaxLargeRequestBytes, DefaultMaxLargeRequestBytes)
	set(&l.MaxCallsPerPrincipal, DefaultMaxCallsPerPrincipal)
	set(&l.MaxWatchesPerPrincipal, DefaultMaxWatchesPerPrincipal)
	set(&l.MaxProbes, DefaultMaxProbes)
	if l.MaxStreamsPerConn == 0 {
		l.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	l.MaxLargeRequestBytes = max(l.MaxLargeRequestBytes, l.MaxRequestBytes)
	return l
}

// slots counts the calls each holder has open.
type slots struct {
	mu   sync.Mutex
	open map[string]int
}

// acquire takes one of limit slots of key, or reports that all are taken.
// The returned release gives it back; calling it again does nothing.
func (s *slots) acquire(key string, limit int) (release func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[key] >= limit {
		return nil, false
	}
	if s.open == nil {
		s.open = map[string]int{}
	}
	s.open[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.open[key]--; s.open[key] <= 0 {
				delete(s.open, key)
			}
		})
	}, true
}

// inUse is how many slots of key are taken.
func (s *slots) inUse(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open[key]
}

// reflectionMethods are gRPC server reflection's, which graftd serves
// (when configured to) to any caller with a token: they name no path, and
// tell what the protos say.
var reflectionMethods = map[string]bool{
	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName:      true,
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName: true,
}

// tappedKey holds the principal tapIn found for a call.
type tappedKey struct{}

// tapIn runs when a call's headers arrive, before grpc reads or decodes
// any of its body: a call that cannot authenticate, names no rpc graftd
// serves, or would pass its principal's bound on open calls is refused
// here and costs graftd nothing more. The slot it takes is given back when
// the call's stream ends, however it ends.
func (s *Server) tapIn(ctx context.Context, info *tap.Info) (context.Context, error) {
	method := info.FullMethodName
	key, limit, what := "probe", s.limits.MaxProbes, "unauthenticated health checks"
	if !strings.HasPrefix(method, healthService) {
		if _, ok := accessTable[method]; !ok && !reflectionMethods[method] {
			return nil, status.Errorf(codes.Unimplemented, "%s is not an rpc graftd serves", method)
		}
		p, err := s.identify(ctx, bearerOf(info.Header))
		if err != nil {
			return nil, toStatus(err)
		}
		key, limit, what = "call "+p.Name, s.limits.MaxCallsPerPrincipal, "calls"
		if method == graftv1.KVService_Watch_FullMethodName {
			key, limit, what = "watch "+p.Name, s.limits.MaxWatchesPerPrincipal, "watches"
		}
		// The call's context is this one: authenticate takes the
		// principal from it instead of hashing the token again.
		ctx = context.WithValue(ctx, tappedKey{}, p)
	}
	release, ok := s.open.acquire(key, limit)
	if !ok {
		return nil, status.Errorf(codes.ResourceExhausted, "%d %s are open at once already, the most allowed; retry when one has ended", limit, what)
	}
	// The stream's context ends when the stream does, handled or not.
	context.AfterFunc(ctx, release)
	return ctx, nil
}

// checkSize refuses a request larger than its rpc allows.
func (s *Server) checkSize(fullMethod string, req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	limit := s.limits.MaxRequestBytes
	if largeRequests[fullMethod] {
		limit = s.limits.MaxLargeRequestBytes
	}
	if n := proto.Size(m); n > limit {
		return status.Errorf(codes.ResourceExhausted, "%s: the request is %d bytes, more than the %d this rpc accepts", lower(methodName(fullMethod)), n, limit)
	}
	return nil
}

// limitOptions are the grpc server options that carry the limits.
func (s *Server) limitOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InTapHandle(s.tapIn),
		grpc.StatsHandler(&s.conns),
		grpc.MaxRecvMsgSize(s.limits.MaxLargeRequestBytes),
		grpc.MaxSendMsgSize(MaxResponseBytes),
		grpc.MaxConcurrentStreams(s.limits.MaxStreamsPerConn),
	}
}

func bearerOf(md metadata.MD) string {
	for _, v := range md.Get("authorization") {
		// The scheme is case-insensitive (RFC 9110).
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:])
		}
	}
	return ""
}

// OpenCalls is how many calls principal has open, and how many watches;
// for tests and diagnostics.
func (s *Server) OpenCalls(principal string) (calls, watches int) {
	return s.open.inUse("call " + principal), s.open.inUse("watch " + principal)
}
