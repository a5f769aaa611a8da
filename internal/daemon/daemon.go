// Package daemon assembles graftd: it starts (or connects to) etcd and
// NATS, builds the store, the token cache and the gRPC and HTTP servers,
// and shuts them down in order.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/audit"
	"github.com/graft-sh/graft/internal/atomicfile"
	"github.com/graft-sh/graft/internal/embedded"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/server"
	"github.com/graft-sh/graft/store"
)

// Daemon is a running graftd.
type Daemon struct {
	cfg Config
	log *slog.Logger

	etcd    *embedded.Etcd
	nats    *embedded.NATS
	cli     *clientv3.Client
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *store.Store
	tokens  *acl.Tokens
	rules   *replicator.Rules
	repl    *replicator.Replicator
	relay   *replicator.Relay
	engine  *acl.Engine
	audit   *audit.Log
	srv     *server.Server
	grpcSrv *grpc.Server
	health  *health.Server
	httpSrv *http.Server
	grpcLn  net.Listener
	httpLn  net.Listener

	rootToken     string
	rootTokenFile string
	keyringFile   string

	ready  atomic.Bool
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error
	closed sync.Once
}

// NewLogger returns the logger graftd uses: text or JSON on w.
func NewLogger(cfg Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	format := cfg.LogFormat
	if format == "" {
		format = "json"
		if cfg.Dev {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// Start validates cfg, brings every part of graftd up and returns once it
// serves. On error everything already started is stopped again.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: log, errc: make(chan error, 4)}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	bg, cancel := context.WithCancel(context.Background())
	d.cancel = cancel

	if err := d.openCore(ctx, bg); err != nil {
		return nil, err
	}
	pingCtx, cancelPing := context.WithTimeout(ctx, 15*time.Second)
	defer cancelPing()
	if cfg.Dev {
		// The root token is stored before the token cache loads, so the
		// cache knows it by the time the API serves its first call.
		if err := d.setupRootToken(ctx); err != nil {
			return nil, err
		}
		installed, _, err := server.InstallDefaultPolicies(ctx, d.store, "graftd --dev", false)
		if err != nil {
			return nil, err
		}
		if len(installed) > 0 {
			log.Info("installed the default policies", "roles", installed)
		}
	}
	d.engine, err = acl.NewEngine(acl.EngineConfig{Store: d.store, Logger: log.With("subsystem", "policies")})
	if err != nil {
		return nil, err
	}
	d.goRun(func() error { return d.engine.Run(bg) })
	select {
	case <-d.engine.Loaded():
	case <-pingCtx.Done():
		return nil, fmt.Errorf("load policies: %w", pingCtx.Err())
	}
	d.tokens, err = acl.NewTokens(acl.TokensConfig{Store: d.store, Logger: log.With("subsystem", "tokens")})
	if err != nil {
		return nil, err
	}
	d.goRun(func() error { return d.tokens.Run(bg) })
	select {
	case <-d.tokens.Loaded():
	case <-pingCtx.Done():
		return nil, fmt.Errorf("load tokens: %w", pingCtx.Err())
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := d.startReplication(ctx, bg, reg); err != nil {
		return nil, err
	}
	d.srv, err = server.New(server.Config{
		Store:         d.store,
		Auth:          d.tokens,
		Access:        d.engine,
		Audit:         d.audit,
		Policies:      d.engine,
		TrustDomain:   cfg.TrustDomain,
		Logger:        log.With("subsystem", "api"),
		Registerer:    reg,
		ReloadKeyring: d.reloadKeyring,
		Replication:   d.repl,
	})
	if err != nil {
		return nil, err
	}
	if err := d.startGRPC(); err != nil {
		return nil, err
	}
	if err := d.startHTTP(reg); err != nil {
		return nil, err
	}
	d.goRun(func() error { d.watchKeyringFile(bg); return nil })
	d.ready.Store(true)
	log.Info("graftd ready", "grpc", d.Addr(), "http", d.HTTPAddr(), "dev", cfg.Dev, "keyring_primary", d.store.Keyring().Primary())
	return d, nil
}

// startReplication starts the rule index, the relay (one graftd at a time
// publishes change events), the replicator (every graftd consumes them) and
// the reconciler (one graftd at a time).
func (d *Daemon) startReplication(ctx, bg context.Context, reg prometheus.Registerer) error {
	log := d.log
	stream := replicator.StreamConfig{MaxAge: d.cfg.ChangesMaxAge}
	d.rules = replicator.NewRules(d.store, log.With("subsystem", "rules"))
	d.goRun(func() error { return d.rules.Run(bg) })
	select {
	case <-d.rules.Loaded():
	case <-ctx.Done():
		return fmt.Errorf("load replication rules: %w", ctx.Err())
	}
	var err error
	d.repl, err = replicator.New(replicator.Config{
		Store: d.store, JetStream: d.js, Stream: stream, Rules: d.rules,
		DestinationPatterns: d.cfg.ReplicaDestinations,
		Logger:              log.With("subsystem", "replicator"), Registerer: reg,
	})
	if err != nil {
		return err
	}
	if err := replicator.OpenStream(ctx, d.js, stream, d.cli, d.cfg.Etcd.Prefix); err != nil {
		return err
	}
	d.relay, err = replicator.NewRelay(replicator.RelayConfig{
		Client: d.cli, Prefix: d.cfg.Etcd.Prefix, JetStream: d.js, Stream: stream,
		Logger: log.With("subsystem", "relay"), Registerer: reg,
	})
	if err != nil {
		return err
	}
	d.goRun(func() error { return d.relay.Run(bg) })
	d.goRun(func() error { return d.repl.Run(bg) })
	d.goRun(func() error {
		return d.repl.RunReconciler(bg, replicator.ReconcilerConfig{Client: d.cli, Prefix: d.cfg.Etcd.Prefix, Interval: d.cfg.ReconcileInterval})
	})
	return nil
}

// openCore connects (or in dev mode starts) etcd and NATS and opens the
// store and the audit log: what both serving and break-glass need.
func (d *Daemon) openCore(ctx, bg context.Context) error {
	if err := d.startBackends(ctx, bg); err != nil {
		return err
	}
	ring, err := store.LoadKeyring(d.keyringFile)
	if err != nil {
		return err
	}
	d.store, err = store.New(store.Config{
		Client:        d.cli,
		Prefix:        d.cfg.Etcd.Prefix,
		Keyring:       ring,
		MaxValueBytes: d.cfg.MaxValueBytes,
		HistoryLimit:  d.cfg.HistoryLimit,
		Logger:        d.log.With("subsystem", "store"),
	})
	if err != nil {
		return err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := d.store.Ping(pingCtx); err != nil {
		return fmt.Errorf("cannot reach etcd at %s: %w", strings.Join(d.cli.Endpoints(), ","), err)
	}

	auditKey, err := d.store.AuditKey(pingCtx)
	if err != nil {
		return err
	}
	d.audit, err = audit.New(pingCtx, audit.Config{
		JetStream: d.js,
		MaxAge:    d.cfg.AuditMaxAge,
		File:      d.cfg.AuditFile,
		HMACKey:   auditKey,
		Logger:    d.log.With("subsystem", "audit"),
	})
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

func (d *Daemon) goRun(f func() error) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := f(); err != nil {
			d.fail(err)
		}
	}()
}

func (d *Daemon) fail(err error) {
	select {
	case d.errc <- err:
	default:
	}
}

// Err delivers a failure that should stop graftd (a server that stopped
// serving, embedded etcd failing).
func (d *Daemon) Err() <-chan error { return d.errc }

// Addr is the gRPC address graftd listens on.
func (d *Daemon) Addr() string { return d.grpcLn.Addr().String() }

// HTTPAddr is the address of the health and metrics endpoints.
func (d *Daemon) HTTPAddr() string { return d.httpLn.Addr().String() }

// RootToken is the root token created at this start, if any.
func (d *Daemon) RootToken() string { return d.rootToken }

// RootTokenFile is where the root token was written, if it was.
func (d *Daemon) RootTokenFile() string { return d.rootTokenFile }

// Store is the store graftd serves; tests use it to inspect state.
func (d *Daemon) Store() *store.Store { return d.store }

// EtcdDir is the embedded etcd data directory (dev).
func (d *Daemon) EtcdDir() string { return d.etcd.Dir }

// NATSDir is the embedded NATS JetStream store directory (dev).
func (d *Daemon) NATSDir() string { return d.nats.Dir }

func (d *Daemon) startBackends(ctx, bg context.Context) error {
	cfg := d.cfg
	etcdEndpoints := cfg.Etcd.Endpoints
	natsURL := cfg.NATS.URL
	d.keyringFile = cfg.KeyringFile
	if cfg.Dev {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		if d.keyringFile == "" {
			d.keyringFile = filepath.Join(cfg.DataDir, "keyring.json")
		}
		if _, err := os.Stat(d.keyringFile); errors.Is(err, os.ErrNotExist) {
			if err := store.CreateKeyringFile(d.keyringFile); err != nil {
				return err
			}
			d.log.Info("generated a keyring", "file", d.keyringFile)
		}
		var err error
		if d.etcd, err = embedded.StartEtcd(ctx, embedded.EtcdConfig{Dir: filepath.Join(cfg.DataDir, "etcd")}); err != nil {
			return err
		}
		d.goRun(func() error {
			select {
			case err, ok := <-d.etcd.Err():
				if ok && err != nil {
					return fmt.Errorf("embedded etcd: %w", err)
				}
			case <-bg.Done():
			}
			return nil
		})
		if d.nats, err = embedded.StartNATS(embedded.NATSConfig{Dir: filepath.Join(cfg.DataDir, "nats")}); err != nil {
			return err
		}
		etcdEndpoints = []string{d.etcd.Endpoint}
		natsURL = d.nats.URL
	}

	etcdTLS, err := clientTLS(cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile)
	if err != nil {
		return fmt.Errorf("etcd TLS: %w", err)
	}
	d.cli, err = clientv3.New(clientv3.Config{
		Endpoints:   etcdEndpoints,
		DialTimeout: 5 * time.Second,
		TLS:         etcdTLS,
		Username:    cfg.Etcd.Username,
		Password:    cfg.Etcd.Password,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}

	opts := []nats.Option{
		nats.Name("graftd"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				d.log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { d.log.Info("NATS reconnected") }),
	}
	if cfg.NATS.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.CredsFile))
	}
	if cfg.NATS.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.NATS.CAFile))
	}
	if cfg.NATS.CertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.NATS.CertFile, cfg.NATS.KeyFile))
	}
	if d.nc, err = nats.Connect(natsURL, opts...); err != nil {
		return fmt.Errorf("cannot reach NATS at %s: %w", natsURL, err)
	}
	if d.js, err = jetstream.New(d.nc); err != nil {
		return fmt.Errorf("NATS JetStream: %w", err)
	}
	infoCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := d.js.AccountInfo(infoCtx); err != nil {
		return fmt.Errorf("NATS at %s has no usable JetStream (start nats-server with -js): %w", natsURL, err)
	}
	return nil
}

func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// serverTLS loads the server certificate and, with a client CA, verifies
// client certificates when they are offered: a caller authenticates with a
// certificate or a token.
func serverTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs = x509.NewCertPool()
		if !tc.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", clientCAFile)
		}
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// setupRootToken installs the dev-mode root token: the one given, or the
// one from the previous run (so an exported GRAFT_TOKEN keeps working), or
// a new one; it replaces every other root token. Outside dev mode root
// tokens come only from the audited `graftd break-glass`.
func (d *Daemon) setupRootToken(ctx context.Context) error {
	file := filepath.Join(d.cfg.DataDir, "root-token")
	token := d.cfg.DevRootToken
	if token == "" {
		if data, err := os.ReadFile(file); err == nil {
			token = strings.TrimSpace(string(data))
		}
	}
	if token == "" {
		token = acl.NewToken()
	}
	rec := store.TokenRecord{Hash: acl.HashToken(token), Accessor: acl.NewAccessor(), Principal: acl.RootPrincipal, Created: time.Now().UTC(), Creator: "graftd --dev"}
	if err := d.store.ReplacePrincipalTokens(ctx, acl.RootPrincipal, rec); err != nil {
		return err
	}
	d.rootToken = token
	return d.writeRootToken(file, token)
}

func (d *Daemon) writeRootToken(file, token string) error {
	if err := atomicfile.Write(file, []byte(token+"\n"), 0o600); err != nil {
		return fmt.Errorf("write root token: %w", err)
	}
	d.rootTokenFile = file
	return nil
}

func (d *Daemon) startGRPC() error {
	opts := append(d.srv.ServerOptions(),
		// Let clients ping every 10s so a half-open connection under a
		// quiet watch is found; ping idle clients ourselves every minute.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	if d.cfg.TLSCertFile != "" {
		tc, err := serverTLS(d.cfg.TLSCertFile, d.cfg.TLSKeyFile, d.cfg.ClientCAFile)
		if err != nil {
			return fmt.Errorf("server TLS: %w", err)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	d.grpcSrv = grpc.NewServer(opts...)
	d.srv.Register(d.grpcSrv)
	d.health = health.NewServer()
	healthpb.RegisterHealthServer(d.grpcSrv, d.health)
	ln, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", d.cfg.Listen, err)
	}
	d.grpcLn = ln
	d.goRun(func() error {
		if err := d.grpcSrv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("gRPC server: %w", err)
		}
		return nil
	})
	return nil
}

func (d *Daemon) startHTTP(reg *prometheus.Registry) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", d.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", d.cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", d.cfg.HTTPListen, err)
	}
	d.httpLn = ln
	d.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	d.goRun(func() error {
		if err := d.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("HTTP server: %w", err)
		}
		return nil
	})
	return nil
}

// readyz answers 200 only when etcd has a quorum, NATS is connected and
// the API is serving; otherwise 503 naming what is not ready.
func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	var problems []string
	if !d.ready.Load() {
		problems = append(problems, "api: not serving")
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := d.store.Ping(ctx); err != nil {
		problems = append(problems, "etcd: "+err.Error())
	}
	if !d.nc.IsConnected() {
		problems = append(problems, "nats: "+d.nc.Status().String())
	}
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, strings.Join(problems, "\n")+"\n")
		return
	}
	io.WriteString(w, "ok\n")
}

// reloadKeyring rereads the keyring file and installs it in the store.
func (d *Daemon) reloadKeyring() error {
	ring, err := store.LoadKeyring(d.keyringFile)
	if err != nil {
		return err
	}
	if old := d.store.Keyring(); old.Primary() != ring.Primary() || len(old.IDs()) != len(ring.IDs()) {
		d.log.Info("keyring reloaded", "file", d.keyringFile, "primary_key", ring.Primary(), "keys", len(ring.IDs()))
	}
	d.store.SetKeyring(ring)
	return nil
}

// watchKeyringFile reloads the keyring when its file changes, so a
// `graftd keyring rotate` takes effect without a restart.
func (d *Daemon) watchKeyringFile(ctx context.Context) {
	stat := func() (time.Time, int64) {
		info, err := os.Stat(d.keyringFile)
		if err != nil {
			return time.Time{}, 0
		}
		return info.ModTime(), info.Size()
	}
	mod, size := stat()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m, s := stat()
		if m.Equal(mod) && s == size {
			continue
		}
		mod, size = m, s
		if err := d.reloadKeyring(); err != nil {
			d.log.Error("keyring file changed but cannot be loaded; keeping the old keyring", "err", err)
		}
	}
}

// Shutdown stops graftd: it stops taking calls, ends watch streams with
// Unavailable, lets in-flight calls finish (bounded by ctx), then stops the
// embedded servers.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.ready.Store(false)
	if d.health != nil {
		d.health.Shutdown()
	}
	if d.srv != nil {
		d.srv.Stop()
	}
	if d.grpcSrv != nil {
		done := make(chan struct{})
		go func() { d.grpcSrv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			d.log.Warn("in-flight calls did not finish in time; stopping them")
			d.grpcSrv.Stop()
			<-done
		}
	}
	if d.httpSrv != nil {
		d.httpSrv.Shutdown(ctx)
	}
	d.close()
	d.log.Info("graftd stopped")
	return nil
}

// close stops whatever was started, in reverse order.
func (d *Daemon) close() {
	d.closed.Do(func() {
		if d.grpcSrv != nil {
			d.grpcSrv.Stop()
		}
		if d.httpSrv != nil {
			d.httpSrv.Close()
		}
		if d.cancel != nil {
			d.cancel()
		}
		// Background work ends first, while etcd and NATS still answer: the
		// relay saves its cursor and resigns its election on the way out.
		d.wg.Wait()
		if d.audit != nil {
			d.audit.Close()
		}
		if d.nc != nil {
			d.nc.Close()
		}
		if d.cli != nil {
			d.cli.Close()
		}
		if d.nats != nil {
			d.nats.Close()
		}
		if d.etcd != nil {
			d.etcd.Close()
		}
	})
}

// EtcdEndpoints are the etcd client URLs graftd uses.
func (d *Daemon) EtcdEndpoints() []string { return d.cli.Endpoints() }

// KeyringFile is the keyring file graftd loads and watches.
func (d *Daemon) KeyringFile() string { return d.keyringFile }
