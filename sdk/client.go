// Package sdk is the Go client that services import to read, write and
// watch values in graft, and that operators use to manage tokens, access
// policies and the audit log. It owns the gRPC connection to graftd, the
// bearer token, and the reconnecting watch; it speaks sdk types, never
// generated protobuf types.
//
//	c, err := sdk.New(ctx, sdk.Config{Addr: "127.0.0.1:7420", Token: token})
//	if err != nil { ... }
//	defer c.Close()
//	e, err := c.Get(ctx, "/app/orders/replicated/db/password")
//	if errors.Is(err, sdk.ErrNotFound) { ... }
package sdk

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/grpclimit"
)

// Config says where graftd is and how to authenticate to it.
type Config struct {
	// Addr is graftd's gRPC address, host:port.
	Addr string
	// Token is the bearer token sent with every call as the metadata
	// "authorization: Bearer <token>".
	Token string
	// TLS secures the connection. When nil the connection is plaintext,
	// which is allowed only to a loopback address (127.0.0.0/8, ::1,
	// localhost) unless Insecure is set.
	TLS *tls.Config
	// Insecure allows a plaintext connection to a non-loopback address.
	// The token then crosses the network in the clear.
	Insecure bool
}

// Client talks to one graftd (or a load-balanced set of them). It is safe
// for concurrent use. Close it when done.
type Client struct {
	conn      *grpc.ClientConn
	kv        graftv1.KVServiceClient
	admin     graftv1.AdminServiceClient
	tokens    graftv1.TokenServiceClient
	policies  graftv1.PolicyServiceClient
	audit     graftv1.AuditServiceClient
	repl      graftv1.ReplicationServiceClient
	agents    graftv1.AgentServiceClient
	rotations graftv1.RotationServiceClient
	dbcred    graftv1.DBCredServiceClient
	leases    graftv1.LeaseServiceClient
}

// Connection backoff for the gRPC channel: the defaults (1s growing to
// 120s) leave a client idle for minutes after a graftd restart; graftd is
// usually near, so retry quickly and cap at the watch backoff's ceiling.
var connectBackoff = backoff.Config{
	BaseDelay:  50 * time.Millisecond,
	Multiplier: 1.6,
	Jitter:     0.2,
	MaxDelay:   watchBackoffMax,
}

// MaxMessageBytes bounds one response: a listing of many wide rules.
// graftd sends no more.
const MaxMessageBytes = grpclimit.MaxResponseBytes

// MaxRequestBytes bounds one request: room for a rule with a hundred
// thousand destinations (about 5 MB). graftd accepts no more, and most of
// its rpcs half that.
const MaxRequestBytes = grpclimit.MaxRequestBytes

// New validates cfg and returns a Client. The connection is made lazily by
// the first call and re-made after failures, so New succeeds while graftd
// is down; ctx is reserved for future use.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var transport credentials.TransportCredentials
	if cfg.TLS != nil {
		transport = credentials.NewTLS(cfg.TLS)
	} else {
		transport = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(cfg.Addr,
		grpc.WithTransportCredentials(transport),
		grpc.WithPerRPCCredentials(bearer{token: cfg.Token, secure: cfg.TLS != nil}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: connectBackoff, MinConnectTimeout: 5 * time.Second}),
		// Pings find a half-open connection under a quiet watch; graftd
		// permits them every 10s and more.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithUserAgent("graft-go-sdk"),
		// A rule may have a hundred thousand destinations (about 5 MB).
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxRequestBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("sdk: connect to %s: %w", cfg.Addr, err)
	}
	return &Client{
		conn:      conn,
		kv:        graftv1.NewKVServiceClient(conn),
		admin:     graftv1.NewAdminServiceClient(conn),
		tokens:    graftv1.NewTokenServiceClient(conn),
		policies:  graftv1.NewPolicyServiceClient(conn),
		audit:     graftv1.NewAuditServiceClient(conn),
		repl:      graftv1.NewReplicationServiceClient(conn),
		agents:    graftv1.NewAgentServiceClient(conn),
		rotations: graftv1.NewRotationServiceClient(conn),
		dbcred:    graftv1.NewDBCredServiceClient(conn),
		leases:    graftv1.NewLeaseServiceClient(conn),
	}, nil
}

// Close closes the connection. Watches end and their channels close.
func (c *Client) Close() error { return c.conn.Close() }

func (cfg Config) validate() error {
	if cfg.Addr == "" {
		return ErrNoAddr
	}
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return fmt.Errorf("sdk: Config.Addr %q is not host:port: %w", cfg.Addr, err)
	}
	if cfg.Token == "" {
		return ErrNoToken
	}
	for i := 0; i < len(cfg.Token); i++ {
		// gRPC metadata values must be printable ASCII; say so here
		// rather than fail every call with an opaque transport error.
		if c := cfg.Token[i]; c <= ' ' || c > '~' {
			return ErrBadToken
		}
	}
	if cfg.TLS == nil && !cfg.Insecure && !isLoopback(host) {
		return fmt.Errorf("%w (address %s)", ErrPlaintext, cfg.Addr)
	}
	return nil
}

// isLoopback reports whether host names this machine without crossing a
// network: localhost, 127.0.0.0/8 or ::1.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// bearer attaches the token to every call.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false for plaintext connections, which
// Config.validate has already limited to loopback or explicit Insecure.
func (b bearer) RequireTransportSecurity() bool { return b.secure }

var _ credentials.PerRPCCredentials = bearer{}
