// Package graftd assembles graftd, the server's composition root: its
// configuration (the option table and its validation), its backends (etcd
// and NATS, embedded in dev mode), every part built on them, and its
// lifecycle, which runs those parts as tasks and stops them in order. It
// also mints break-glass root tokens. It sits above every server package,
// which is why it is not under internal/ with the leaf utilities.
package graftd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/audit"
	"github.com/graft-sh/graft/dbcred/leases"
	"github.com/graft-sh/graft/internal/atomicfile"
	"github.com/graft-sh/graft/internal/embedded"
	"github.com/graft-sh/graft/internal/task"
	"github.com/graft-sh/graft/internal/tlsfiles"
	"github.com/graft-sh/graft/keyring"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/rollout"
	"github.com/graft-sh/graft/rotation/registry"
	"github.com/graft-sh/graft/server"
	"github.com/graft-sh/graft/store"
)

// Daemon is graftd: its backends, its servers and the long-running parts
// that Run runs as tasks.
type Daemon struct {
	cfg Config
	log *slog.Logger

	etcd   *embedded.Etcd
	nats   *embedded.NATS
	nc     *nats.Conn
	js     jetstream.JetStream
	store  *store.Store
	tokens *acl.Tokens
	rules  *replicator.Rules
	repl   *replicator.Replicator
	relay  *replicator.Relay
	// hub serves every client's watch from one etcd watch.
	hub *store.Hub
	// agents keeps graft-agents' reports.
	agents *rollout.Registry
	// leases issues dynamic credentials; its reaper runs on one graftd.
	leases  *leases.Manager
	engine  *acl.Engine
	audit   *audit.Log
	srv     *server.Server
	grpcSrv *grpc.Server
	health  *health.Server
	httpSrv *http.Server
	grpcLn  net.Listener
	httpLn  net.Listener

	etcdCfg       store.EtcdConfig
	unlock        func() // releases the data directory
	rootToken     string
	rootTokenFile string
	keyringFile   string

	// ready is closed once the API serves; serving says whether it still
	// does, for /readyz.
	ready   chan struct{}
	serving atomic.Bool
	closed  sync.Once
	// live is what the liveness probes last found, for /readyz.
	live liveness

	// Set by Start, for Shutdown.
	stop    context.CancelFunc
	stopped chan struct{}
	runErr  error
}

// startupTimeout bounds how long graftd waits for its caches (policies,
// tokens, replication rules) to load before it serves.
const startupTimeout = 15 * time.Second

// drainSlack is how much longer than --shutdown-timeout the background
// work may take to stop: the gRPC drain has that bound, the rest need
// only moments.
const drainSlack = 5 * time.Second

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

// New validates cfg, opens graftd's backends (starting the embedded ones in
// dev mode), builds every part and binds the listeners, so that a port in
// use fails here. Nothing serves until Run. If New fails, what it opened is
// closed again.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: log, ready: make(chan struct{})}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	if err := d.openCore(ctx); err != nil {
		return nil, err
	}
	if d.engine, err = acl.NewEngine(acl.EngineConfig{Store: d.store, Logger: log.With("subsystem", "policies")}); err != nil {
		return nil, err
	}
	if d.tokens, err = acl.NewTokens(acl.TokensConfig{Store: d.store, Logger: log.With("subsystem", "tokens")}); err != nil {
		return nil, err
	}
	if cfg.Dev {
		// The root token is stored before the token cache loads, so the
		// cache knows it by the time the API serves its first call.
		if err := d.setupRootToken(ctx); err != nil {
			return nil, err
		}
		installed, _, err := d.engine.InstallDefaults(ctx, "graftd --dev", false)
		if err != nil {
			return nil, err
		}
		if len(installed) > 0 {
			log.Info("installed the default policies", "roles", installed)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := d.newReplication(ctx, reg); err != nil {
		return nil, err
	}
	if d.hub, err = store.NewHub(store.HubConfig{Store: d.store, Logger: log.With("subsystem", "watch hub"), BufferEvents: cfg.WatchBufferEvents}); err != nil {
		return nil, err
	}
	d.agents = rollout.New(d.store)
	d.leases = leases.New(leases.Config{
		Store: d.store,
		MayRead: func(author, path string) bool {
			return d.engine.Decide(acl.Principal{Name: author, Roles: d.tokens.RolesOf(author)}, acl.ActionRead, path).Allowed
		},
		Audit:        d.audit,
		Log:          log.With("subsystem", "leases"),
		Open:         cfg.Leases.Open,
		PendingGrace: cfg.Leases.PendingGrace,
		Tick:         cfg.Leases.Tick,
		MaxAttempts:  cfg.Leases.MaxAttempts,
		Registerer:   reg,
	})
	rotations := registry.New(d.store)
	reg.MustRegister(registry.NewCollector(rotations))
	d.srv, err = server.New(server.Config{
		Store:             d.store,
		Auth:              d.tokens,
		Access:            d.engine,
		Audit:             d.audit,
		Policies:          d.engine,
		TrustDomain:       cfg.TrustDomain,
		AllowCNIdentities: cfg.AllowCNIdentities,
		Logger:            log.With("subsystem", "api"),
		Registerer:        reg,
		ReloadKeyring:     d.reloadKeyring,
		Replication:       d.repl,
		Agents:            d.agents,
		Rotations:         rotations,
		Leases:            d.leases,
		Watches:           d.hub,
		Limits: server.Limits{
			MaxStreamsPerConn:      uint32(cfg.MaxStreamsPerConn),
			MaxCallsPerPrincipal:   cfg.MaxCallsPerPrincipal,
			MaxWatchesPerPrincipal: cfg.MaxWatchesPerPrincipal,
		},
	})
	if err != nil {
		return nil, err
	}
	if err := d.newGRPC(); err != nil {
		return nil, err
	}
	if err := d.newHTTP(reg); err != nil {
		return nil, err
	}
	return d, nil
}

// newReplication builds the rule index, the replicator (every graftd
// consumes change events), the relay (one graftd at a time publishes
// them) and makes sure the change stream exists.
func (d *Daemon) newReplication(ctx context.Context, reg prometheus.Registerer) error {
	log := d.log
	stream := replicator.StreamConfig{MaxAge: d.cfg.ChangesMaxAge, Replicas: d.cfg.NATS.Replicas}
	d.rules = replicator.NewRules(d.store, log.With("subsystem", "rules"))
	var err error
	d.repl, err = replicator.New(replicator.Config{
		Store: d.store, JetStream: d.js, Stream: stream, Rules: d.rules,
		DestinationPatterns: d.cfg.ReplicaDestinations,
		Logger:              log.With("subsystem", "replicator"), Registerer: reg,
	})
	if err != nil {
		return err
	}
	if err := replicator.OpenStream(ctx, d.js, stream, d.store); err != nil {
		return err
	}
	d.relay, err = replicator.NewRelay(replicator.RelayConfig{
		Store: d.store, JetStream: d.js, Stream: stream,
		Logger: log.With("subsystem", "relay"), Registerer: reg,
	})
	return err
}

// tasks are graftd's long-running parts, run together by Run.
func (d *Daemon) tasks() []task.Task {
	ts := []task.Task{
		task.New("policies", d.engine.Run),
		task.New("tokens", d.tokens.Run),
		task.New("replication rules", d.rules.Run),
		task.New("relay", d.relay.Run),
		task.New("replicator", d.repl.Run),
		task.New("reconciler", func(ctx context.Context) error {
			return d.repl.RunReconciler(ctx, replicator.ReconcilerConfig{Interval: d.cfg.ReconcileInterval, Identities: d.appIdentities})
		}),
		task.New("keyring file", d.watchKeyringFile),
		task.New("watch hub", d.hub.Run),
		task.New("agent reports", func(ctx context.Context) error { return d.agents.Run(ctx, d.log.With("subsystem", "agents")) }),
		task.New("lease reaper", func(ctx context.Context) error { return d.leases.RunReaper(ctx, holder()) }),
		task.New("liveness probe", d.probeLiveness),
		task.New("gRPC server", d.serveGRPC),
		task.New("HTTP server", d.serveHTTP),
	}
	if d.etcd != nil {
		ts = append(ts, task.New("embedded etcd", d.watchEmbeddedEtcd))
	}
	return ts
}

// appIdentities are the applications with a token that has not expired.
func (d *Daemon) appIdentities(ctx context.Context) ([]string, error) {
	recs, err := d.tokens.List(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, rec := range recs {
		if name, ok := replicator.AppName(rec.Principal); ok && (rec.Expires.IsZero() || rec.Expires.After(time.Now())) {
			names = append(names, name)
		}
	}
	return names, nil
}

// Run serves until ctx ends or a part fails. Then it stops taking calls,
// ends watch streams with Unavailable, lets in-flight calls finish within
// --shutdown-timeout, stops the background work (the relay saves its
// cursor and resigns) and closes the backends, embedded ones last. It
// returns every failure, and nil after a clean stop.
func (d *Daemon) Run(ctx context.Context) error {
	err := task.Run(ctx, d.cfg.ShutdownTimeout+drainSlack, d.tasks()...)
	d.close()
	if err != nil {
		d.log.Error("graftd stopped after a failure", "err", err)
		return err
	}
	d.log.Info("graftd stopped")
	return nil
}

// Ready is closed once graftd serves its API.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Start is New followed by Run in the background, for tests and tools
// that embed graftd: it returns once the API serves, and the daemon runs
// until Shutdown. ctx bounds the start only.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Daemon, error) {
	d, err := New(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.stop, d.stopped = cancel, make(chan struct{})
	go func() {
		defer close(d.stopped)
		d.runErr = d.Run(runCtx)
	}()
	select {
	case <-d.ready:
		return d, nil
	case <-d.stopped:
		cancel()
		return nil, d.runErr
	case <-ctx.Done():
		cancel()
		<-d.stopped
		return nil, ctx.Err()
	}
}

// Shutdown stops a graftd begun with Start, as Run does when its context
// ends, and waits until it has stopped or ctx ends.
func (d *Daemon) Shutdown(ctx context.Context) error {
	if d.stop == nil {
		return errors.New("graftd: Shutdown needs a daemon begun with Start")
	}
	d.stop()
	select {
	case <-d.stopped:
		return d.runErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// openCore connects (or in dev mode starts) etcd and NATS and opens the
// store and the audit log: what both serving and break-glass need.
func (d *Daemon) openCore(ctx context.Context) error {
	if err := d.startBackends(ctx); err != nil {
		return err
	}
	ring, err := keyring.Load(d.keyringFile)
	if err != nil {
		return err
	}
	scfg := store.Config{
		Etcd:          d.etcdCfg,
		Prefix:        d.cfg.Etcd.Prefix,
		Keyring:       ring,
		MaxValueBytes: d.cfg.MaxValueBytes,
		HistoryLimit:  d.cfg.HistoryLimit,
		Logger:        d.log.With("subsystem", "store"),
	}
	if d.etcd != nil {
		scfg.Client = d.etcd.Client() // in process: the embedded etcd opens no port
		scfg.LeaseClient = d.etcd.LeaseClient()
	}
	d.store, err = store.New(scfg)
	if err != nil {
		return err
	}
	pingCtx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	if err := d.store.Ping(pingCtx); err != nil {
		where := "the embedded etcd (in process)"
		if eps := d.EtcdEndpoints(); len(eps) > 0 {
			where = "etcd at " + strings.Join(eps, ",")
		}
		return fmt.Errorf("cannot reach %s: %w", where, err)
	}

	auditKey, err := d.store.AuditKey(pingCtx)
	if err != nil {
		return err
	}
	d.audit, err = audit.New(pingCtx, audit.Config{
		JetStream: d.js,
		MaxAge:    d.cfg.AuditMaxAge,
		Replicas:  d.cfg.NATS.Replicas,
		File:      d.cfg.AuditFile,
		HMACKey:   auditKey,
		Logger:    d.log.With("subsystem", "audit"),
	})
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// watchEmbeddedEtcd fails graftd when its embedded etcd fails.
func (d *Daemon) watchEmbeddedEtcd(ctx context.Context) error {
	select {
	case err, ok := <-d.etcd.Err():
		if ok && err != nil {
			return fmt.Errorf("embedded etcd: %w", err)
		}
	case <-ctx.Done():
	}
	return nil
}

// awaitCaches waits, within one bound, until the caches the API decides
// with have loaded: policies, tokens and replication rules.
func (d *Daemon) awaitCaches(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	caches := []struct {
		name   string
		loaded <-chan struct{}
	}{{"policies", d.engine.Loaded()}, {"tokens", d.tokens.Loaded()}, {"replication rules", d.rules.Loaded()}}
	for _, c := range caches {
		select {
		case <-c.loaded:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("load %s: not loaded within %s; is etcd answering? (the log says why)", c.name, startupTimeout)
			}
			return ctx.Err()
		}
	}
	return nil
}

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

func (d *Daemon) startBackends(ctx context.Context) error {
	cfg := d.cfg
	etcdEndpoints := cfg.Etcd.Endpoints
	natsURL := cfg.NATS.URL
	d.keyringFile = cfg.KeyringFile
	if cfg.Dev {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		release, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return err
		}
		d.unlock = release
		if d.keyringFile == "" {
			d.keyringFile = filepath.Join(cfg.DataDir, "keyring.json")
		}
		if _, err := os.Stat(d.keyringFile); errors.Is(err, os.ErrNotExist) {
			if err := keyring.CreateFile(d.keyringFile); err != nil {
				return err
			}
			d.log.Info("generated a keyring", "file", d.keyringFile)
		}
		// Neither embedded server has authentication, so neither opens a
		// port: graftd reaches both in process (EmbeddedListen aside).
		inProcess := !cfg.EmbeddedListen
		if d.etcd, err = embedded.StartEtcd(ctx, embedded.EtcdConfig{Dir: filepath.Join(cfg.DataDir, "etcd"), InProcess: inProcess}); err != nil {
			return err
		}
		if d.nats, err = embedded.StartNATS(embedded.NATSConfig{Dir: filepath.Join(cfg.DataDir, "nats"), InProcess: inProcess}); err != nil {
			return err
		}
		natsURL = "in-process NATS"
	}

	etcdTLS, err := tlsfiles.Client(cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile)
	if err != nil {
		return fmt.Errorf("etcd TLS: %w", err)
	}
	d.etcdCfg = store.EtcdConfig{Endpoints: etcdEndpoints, TLS: etcdTLS, Username: cfg.Etcd.Username, Password: cfg.Etcd.Password}

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
	url := natsURL
	if d.nats != nil {
		url = ""
		opts = append(opts, nats.InProcessServer(d.nats.Server))
	}
	if d.nc, err = nats.Connect(url, opts...); err != nil {
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
	rec := acl.TokenRecord{Hash: acl.HashToken(token), Accessor: acl.NewAccessor(), Principal: acl.RootPrincipal, Created: time.Now().UTC(), Creator: "graftd --dev"}
	if err := d.tokens.ReplacePrincipal(ctx, acl.RootPrincipal, rec); err != nil {
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

// newGRPC builds the gRPC server and binds its listener.
func (d *Daemon) newGRPC() error {
	opts := append(d.srv.ServerOptions(),
		// Each agent holds a connection; with grpc's 32 KiB read and
		// write buffer per connection, 10,000 idle agents cost 640 MB.
		// A write buffer shared between flushes and a small read buffer
		// keep that to a few KiB each.
		grpc.SharedWriteBuffer(true), grpc.ReadBufferSize(8<<10),
		// Let clients ping every 10s so a half-open connection under a
		// quiet watch is found; ping idle clients ourselves every minute.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	)
	if d.cfg.TLSCertFile != "" {
		tc, err := tlsfiles.Server(d.cfg.TLSCertFile, d.cfg.TLSKeyFile, d.cfg.ClientCAFile)
		if err != nil {
			return fmt.Errorf("server TLS: %w", err)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	d.grpcSrv = grpc.NewServer(opts...)
	d.srv.Register(d.grpcSrv)
	if d.cfg.Dev || d.cfg.GRPCReflection {
		// Behind the same authentication as every other call: the API's
		// shape is public (the protos are), but an unauthenticated caller
		// gets nothing from graftd.
		reflection.Register(d.grpcSrv)
	}
	d.health = health.NewServer()
	healthpb.RegisterHealthServer(d.grpcSrv, d.health)
	ln, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", d.cfg.Listen, err)
	}
	d.grpcLn = ln
	return nil
}

// serveGRPC serves the API once the caches have loaded, until ctx ends;
// then it ends watch streams and lets in-flight calls finish within
// --shutdown-timeout before it stops the rest.
func (d *Daemon) serveGRPC(ctx context.Context) error {
	if err := d.awaitCaches(ctx); err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- d.grpcSrv.Serve(d.grpcLn) }()
	d.serving.Store(true)
	close(d.ready)
	d.log.Info("graftd ready", "grpc", d.Addr(), "http", d.HTTPAddr(), "dev", d.cfg.Dev, "keyring_primary", d.store.Keyring().Primary())
	select {
	case err := <-served:
		d.serving.Store(false)
		return err
	case <-ctx.Done():
	}
	d.serving.Store(false)
	d.health.Shutdown()
	d.srv.Stop()
	drained := make(chan struct{})
	go func() { d.grpcSrv.GracefulStop(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(d.cfg.ShutdownTimeout):
		d.log.Warn("in-flight calls did not finish in time; stopping them", "shutdown_timeout", d.cfg.ShutdownTimeout)
		d.grpcSrv.Stop()
		<-drained
	}
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// newHTTP builds the health and metrics server and binds its listener.
func (d *Daemon) newHTTP(reg *prometheus.Registry) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", d.readyz)
	ln, err := net.Listen("tcp", d.cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", d.cfg.HTTPListen, err)
	}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if !IsLoopback(ln.Addr().String()) {
		metrics = d.operatorsOnly(metrics)
	}
	mux.Handle("GET /metrics", metrics)
	if d.cfg.EnablePprof {
		// The profiles read no value, but they show what graftd runs and
		// cost CPU while taken: operators only, as /metrics. The command
		// line is not served: it may hold --dev-root-token.
		profs := http.NewServeMux()
		profs.HandleFunc("/debug/pprof/", pprof.Index) // named profiles; cmdline is not one
		profs.HandleFunc("/debug/pprof/profile", pprof.Profile)
		profs.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		profs.HandleFunc("/debug/pprof/trace", pprof.Trace)
		var prof http.Handler = profs
		if !IsLoopback(ln.Addr().String()) {
			prof = d.operatorsOnly(prof)
		}
		mux.Handle("/debug/pprof/", prof)
	}
	d.httpLn = ln
	d.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return nil
}

// operatorsOnly lets through a request whose bearer token's principal may
// list /: /metrics names every rotation and whether it failed, which is
// for operators, so off loopback it asks for a token. admin may list /; a
// scraper's own role needs only `allow: [list], paths: [/]`, which lets it
// list no path below /.
func (d *Daemon) operatorsOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="graftd"`)
			http.Error(w, "metrics: send a bearer token whose principal may list / (graftd's HTTP listener is not on loopback)", http.StatusUnauthorized)
			return
		}
		p, err := d.tokens.Authenticate(r.Context(), strings.TrimSpace(token))
		if err != nil {
			http.Error(w, "metrics: "+err.Error(), http.StatusUnauthorized)
			return
		}
		if !d.engine.Decide(p, acl.ActionList, "/").Allowed {
			http.Error(w, fmt.Sprintf("metrics: %s may not list /, which reading metrics takes", p.Name), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// serveHTTP serves /healthz, /readyz and /metrics until ctx ends.
func (d *Daemon) serveHTTP(ctx context.Context) error {
	served := make(chan error, 1)
	go func() { served <- d.httpSrv.Serve(d.httpLn) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.ShutdownTimeout)
	defer cancel()
	d.httpSrv.Shutdown(sctx)
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// readyz answers 200 only when etcd has a quorum, NATS is connected, the
// API is serving, and the liveness probes find the watch path and the
// relay's change feed moving; otherwise 503 naming what is not ready.
func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	var problems []string
	if !d.serving.Load() {
		problems = append(problems, "api: not serving")
	}
	// What the probes found as of this request, before a ping that may
	// take its whole timeout.
	stuck := d.livenessProblems()
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := d.store.Ping(ctx); err != nil {
		problems = append(problems, "etcd: "+err.Error())
	}
	if !d.nc.IsConnected() {
		problems = append(problems, "nats: "+d.nc.Status().String())
	}
	problems = append(problems, stuck...)
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, strings.Join(problems, "\n")+"\n")
		return
	}
	io.WriteString(w, "ok\n")
}

// reloadKeyring rereads the keyring file and installs it in the store.
func (d *Daemon) reloadKeyring() error {
	ring, err := keyring.Load(d.keyringFile)
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
func (d *Daemon) watchKeyringFile(ctx context.Context) error {
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
			return nil
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

// close releases whatever New opened, in reverse order: clients first,
// the embedded servers last. Run calls it after every task has returned.
func (d *Daemon) close() {
	d.closed.Do(func() {
		for _, ln := range []net.Listener{d.grpcLn, d.httpLn} {
			if ln != nil {
				ln.Close()
			}
		}
		if d.leases != nil {
			d.leases.Close()
		}
		if d.audit != nil {
			d.audit.Close()
		}
		if d.nc != nil {
			d.nc.Close()
		}
		if d.store != nil {
			d.store.Close()
		}
		if d.nats != nil {
			d.nats.Close()
		}
		if d.etcd != nil {
			d.etcd.Close()
		}
		if d.unlock != nil {
			d.unlock()
		}
	})
}

// EtcdEndpoints are the etcd client URLs graftd uses.
// In dev mode that is none, unless EmbeddedListen asked for a listener.
func (d *Daemon) EtcdEndpoints() []string {
	if d.etcd != nil {
		if d.etcd.Endpoint == "" {
			return nil
		}
		return []string{d.etcd.Endpoint}
	}
	return d.store.Endpoints()
}

// KeyringFile is the keyring file graftd loads and watches.
func (d *Daemon) KeyringFile() string { return d.keyringFile }

// holder names this graftd in the elections it campaigns in: host:pid.
func holder() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}
