// Package server exposes graft's gRPC API. It wires the store and the
// access checks together, authenticates every call, and is the one place
// where domain errors become gRPC status codes.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/store"
)

// Tokens turns a bearer token into a principal and keeps the token
// records. Put and Delete return once the change is in effect on this
// replica, so the caller can rely on the result at once.
type Tokens interface {
	Authenticate(ctx context.Context, token string) (acl.Principal, error)
	Put(ctx context.Context, rec acl.TokenRecord) error
	List(ctx context.Context) ([]acl.TokenRecord, error)
	Delete(ctx context.Context, hash string) error
}

var _ Tokens = (*acl.Tokens)(nil)

// KeyringReloader reloads the keyring from wherever it is kept (the
// keyring file) and installs it in the store.
type KeyringReloader func() error

// Config configures a Server.
type Config struct {
	Store  *store.Store
	Auth   Tokens
	Access Authorizer
	Audit  Auditor
	// Policies is the policy engine behind Access; PolicyService.CheckPolicy
	// explains decisions with it.
	Policies *acl.Engine
	// TrustDomain restricts the SPIFFE IDs accepted from client
	// certificates; empty accepts any.
	TrustDomain string
	// AllowCNIdentities accepts a client certificate's common name as
	// its identity even with a TrustDomain (without one it always is).
	AllowCNIdentities bool
	Logger            *slog.Logger
	// Registerer receives the RPC metrics; nil registers none.
	Registerer prometheus.Registerer
	// ReloadKeyring, if set, is called before a re-encryption sweep.
	ReloadKeyring KeyringReloader
	// Replication manages replication rules; required.
	Replication Replication
	// Agents keeps graft-agents' reports; nil keeps none.
	Agents Agents
	// Rotations keeps blue/green rotations; nil keeps none.
	Rotations Rotations
	// Leases issues dynamic credentials; nil issues none.
	Leases Leases
	// Limits bound requests, streams and calls; zero fields take the
	// defaults.
	Limits Limits
	// Watches serves KVService.Watch; graftd gives its store.Hub, which
	// serves every watch from one etcd watch. Nil serves each from an
	// etcd watch of its own (Store.WatchFunc).
	Watches Watches
}

// Watches serves watches of the key space: the changes under prefix from
// startRev (0: after now), values only where readable says yes.
type Watches interface {
	Watch(ctx context.Context, prefix string, startRev int64, keysOnly bool, readable func(path string) bool) (int64, <-chan store.WatchBatch, error)
}

var _ Watches = (*store.Hub)(nil)

// ownWatches serves each watch from an etcd watch of its own.
type ownWatches struct{ s *store.Store }

func (w ownWatches) Watch(ctx context.Context, prefix string, startRev int64, keysOnly bool, readable func(path string) bool) (int64, <-chan store.WatchBatch, error) {
	return w.s.WatchFunc(ctx, prefix, startRev, keysOnly, readable)
}

// Server implements the graft.v1 services.
type Server struct {
	graftv1.UnimplementedKVServiceServer
	graftv1.UnimplementedAdminServiceServer
	graftv1.UnimplementedTokenServiceServer
	graftv1.UnimplementedPolicyServiceServer
	graftv1.UnimplementedAuditServiceServer
	graftv1.UnimplementedReplicationServiceServer
	graftv1.UnimplementedAgentServiceServer
	graftv1.UnimplementedRotationServiceServer
	graftv1.UnimplementedDBCredServiceServer
	graftv1.UnimplementedLeaseServiceServer

	store       *store.Store
	watches     Watches
	auth        Tokens
	access      Authorizer
	audit       Auditor
	policies    *acl.Engine
	certIDs     acl.CertIdentities
	log         *slog.Logger
	reload      KeyringReloader
	replication Replication
	agents      Agents
	rotations   Rotations
	leases      Leases
	limits      Limits
	open        slots

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	stopOnce sync.Once
	stopping chan struct{}
	// conns numbers connections for the agent registry.
	conns conns
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Auth == nil || cfg.Access == nil || cfg.Audit == nil || cfg.Policies == nil || cfg.Replication == nil {
		return nil, errors.New("server: Config.Store, Auth, Access, Audit, Policies and Replication are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Watches == nil {
		cfg.Watches = ownWatches{cfg.Store}
	}
	s := &Server{
		store:       cfg.Store,
		watches:     cfg.Watches,
		auth:        cfg.Auth,
		access:      cfg.Access,
		audit:       cfg.Audit,
		policies:    cfg.Policies,
		certIDs:     acl.CertIdentities{TrustDomain: cfg.TrustDomain, AllowCN: cfg.AllowCNIdentities},
		log:         cfg.Logger,
		reload:      cfg.ReloadKeyring,
		replication: cfg.Replication,
		agents:      cfg.Agents,
		rotations:   cfg.Rotations,
		leases:      cfg.Leases,
		limits:      cfg.Limits.withDefaults(),
		stopping:    make(chan struct{}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "graft_grpc_requests_total",
			Help: "gRPC requests handled, by method and status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "graft_grpc_request_duration_seconds",
			Help:    "Latency of unary gRPC requests, by method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}, []string{"method"}),
	}
	if cfg.Agents != nil {
		s.conns.closed = cfg.Agents.Closed
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.requests, s.latency} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// Register installs the services on a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	graftv1.RegisterKVServiceServer(r, s)
	graftv1.RegisterAdminServiceServer(r, s)
	graftv1.RegisterTokenServiceServer(r, s)
	graftv1.RegisterPolicyServiceServer(r, s)
	graftv1.RegisterAuditServiceServer(r, s)
	graftv1.RegisterReplicationServiceServer(r, s)
	graftv1.RegisterAgentServiceServer(r, s)
	graftv1.RegisterRotationServiceServer(r, s)
	graftv1.RegisterDBCredServiceServer(r, s)
	graftv1.RegisterLeaseServiceServer(r, s)
}

// ServerOptions returns the options that authenticate, bound, log and
// measure every call: a tap that refuses a call before its body is read
// unless it authenticates and its principal has room for it, the message
// and stream limits, and the interceptors. Pass them to grpc.NewServer.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return append(s.limitOptions(),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	)
}

// Stop makes open watch streams end with Unavailable so that a graceful
// gRPC stop can complete; clients resume from the revision they reached.
func (s *Server) Stop() {
	s.stopOnce.Do(func() { close(s.stopping) })
}

// authenticate finds the caller: a bearer token if one is sent, otherwise
// a verified client certificate (mTLS). It also gives the request its id.
func (s *Server) authenticate(ctx context.Context) (context.Context, error) {
	ctx = context.WithValue(ctx, requestIDKey{}, newRequestID())
	p, tapped := ctx.Value(tappedKey{}).(acl.Principal)
	if !tapped {
		var err error
		if p, err = s.identify(ctx, bearer(ctx)); err != nil {
			return nil, toStatus(err)
		}
	}
	s.appSeen(ctx, p)
	return acl.WithPrincipal(ctx, p), nil
}

// identify finds the principal of a bearer token, or without one of the
// connection's verified client certificate. It reads only memory, so the
// tap can call it before a call's body is read.
func (s *Server) identify(ctx context.Context, token string) (acl.Principal, error) {
	if token == "" {
		if cert := clientCert(ctx); cert != nil {
			return acl.PrincipalFromCert(cert, s.certIDs)
		}
	}
	return s.auth.Authenticate(ctx, token)
}

// appSeen makes an application known the first time its identity
// authenticates (a certificate, or a token created before graft kept
// applications), so its first request already finds the copies of every
// pattern rule. For a known application it is a map lookup.
func (s *Server) appSeen(ctx context.Context, p acl.Principal) {
	app, ok := replicator.AppName(p.Name)
	if !ok {
		return
	}
	via := p.Method
	if via == "token" {
		via = "token-auth"
	}
	if err := s.replication.AppSeen(ctx, app, via); err != nil {
		s.log.Warn("a new application's pattern destinations are not all in place yet; the reconciler retries", "app", app, "err", err)
	}
}

// clientCert returns the verified client certificate of the connection.
func clientCert(ctx context.Context) *x509.Certificate {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	return bearerOf(md)
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	method := methodName(info.FullMethod)
	if strings.HasPrefix(info.FullMethod, healthService) {
		return handler(ctx, req) // probes carry no token and learn nothing secret
	}
	resp, err := func() (any, error) {
		ctx, err := s.authenticate(ctx)
		if err != nil {
			return nil, err
		}
		if err := s.checkSize(info.FullMethod, req); err != nil {
			return nil, err
		}
		grpc.SetHeader(ctx, metadata.Pairs("x-graft-request-id", requestID(ctx)))
		return s.guard(ctx, info.FullMethod, req, handler)
	}()
	code := status.Code(err)
	s.requests.WithLabelValues(method, code.String()).Inc()
	s.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
	s.logCall(ctx, method, code, time.Since(start), err)
	return resp, err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if strings.HasPrefix(info.FullMethod, healthService) {
		return handler(srv, ss)
	}
	start := time.Now()
	method := methodName(info.FullMethod)
	err := func() error {
		ctx, err := s.authenticate(ss.Context())
		if err != nil {
			return err
		}
		// Watch authorizes each event and audits itself: only the
		// handler sees the request.
		return handler(srv, &authedStream{ServerStream: ss, ctx: ctx, check: func(m any) error { return s.checkSize(info.FullMethod, m) }})
	}()
	code := status.Code(err)
	s.requests.WithLabelValues(method, code.String()).Inc()
	s.logCall(ss.Context(), method, code, time.Since(start), err)
	return err
}

func (s *Server) logCall(ctx context.Context, method string, code codes.Code, d time.Duration, err error) {
	level := slog.LevelDebug
	switch code {
	case codes.OK, codes.NotFound, codes.Canceled, codes.FailedPrecondition, codes.InvalidArgument, codes.AlreadyExists, codes.OutOfRange:
	case codes.Internal, codes.Unknown, codes.DataLoss:
		level = slog.LevelError
	default:
		level = slog.LevelInfo
	}
	if !s.log.Enabled(ctx, level) {
		return
	}
	attrs := []any{"method", method, "code", code.String(), "duration", d}
	if err != nil {
		attrs = append(attrs, "err", status.Convert(err).Message())
	}
	s.log.Log(ctx, level, "rpc", attrs...)
}

type authedStream struct {
	grpc.ServerStream
	ctx   context.Context
	check func(m any) error
}

func (a *authedStream) Context() context.Context { return a.ctx }

// RecvMsg holds a streamed request to its rpc's size limit.
func (a *authedStream) RecvMsg(m any) error {
	if err := a.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return a.check(m)
}

// healthService is the standard gRPC health service, which load balancers
// and Kubernetes probes call without credentials.
const healthService = "/grpc.health.v1.Health/"

func methodName(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}

func principal(ctx context.Context) acl.Principal {
	p, _ := acl.PrincipalFrom(ctx)
	return p
}
