package graftd

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/internal/config"
	"github.com/graft-sh/graft/replicator"
	"github.com/graft-sh/graft/server"
	"github.com/graft-sh/graft/store"
)

// Config is everything graftd is configured with. Values come from the
// defaults, then a YAML file (--config), then GRAFT_* environment variables,
// then flags; each later source overrides the earlier.
type Config struct {
	Dev            bool   `yaml:"dev"`
	DataDir        string `yaml:"data_dir"`
	Listen         string `yaml:"listen"`
	HTTPListen     string `yaml:"http_listen"`
	InsecureListen bool   `yaml:"insecure_listen"`
	TLSCertFile    string `yaml:"tls_cert_file"`
	TLSKeyFile     string `yaml:"tls_key_file"`
	ClientCAFile   string `yaml:"client_ca_file"`
	TrustDomain    string `yaml:"spiffe_trust_domain"`
	// AllowCNIdentities accepts client certificates' common names as
	// identities even with a trust domain set.
	AllowCNIdentities bool          `yaml:"allow_cn_identities"`
	AuditFile         string        `yaml:"audit_file"`
	AuditMaxAge       time.Duration `yaml:"audit_max_age"`
	// ReplicaDestinations are the path patterns replication destinations
	// must match.
	ReplicaDestinations []string `yaml:"replica_destinations"`
	// ReconcileInterval is how often every rule is compared and repaired.
	ReconcileInterval time.Duration `yaml:"reconcile_interval"`
	// ChangesMaxAge is how long the GRAFT_CHANGES stream keeps events.
	ChangesMaxAge time.Duration `yaml:"changes_max_age"`
	KeyringFile   string        `yaml:"keyring_file"`
	DevRootToken  string        `yaml:"dev_root_token"`
	MaxValueBytes int           `yaml:"max_value_bytes"`
	HistoryLimit  int           `yaml:"history_limit"`
	LogFormat     string        `yaml:"log_format"`
	LogLevel      string        `yaml:"log_level"`
	// ShutdownTimeout bounds how long in-flight calls may take to finish.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxStreamsPerConn, MaxCallsPerPrincipal and MaxWatchesPerPrincipal
	// bound the calls one connection, and one principal over all its
	// connections, may have open at once.
	MaxStreamsPerConn      int `yaml:"max_streams_per_connection"`
	MaxCallsPerPrincipal   int `yaml:"max_calls_per_principal"`
	MaxWatchesPerPrincipal int `yaml:"max_watches_per_principal"`
	// WatchBufferEvents is how many recent changes graftd keeps in
	// memory, so that a watch resuming from one of them (an agent
	// reconnecting) joins without a read from etcd.
	WatchBufferEvents int `yaml:"watch_buffer_events"`
	// EnablePprof serves Go's profiles (/debug/pprof/) on the HTTP
	// listener, for operators, as /metrics is.
	EnablePprof bool `yaml:"enable_pprof"`
	// GRPCReflection serves gRPC server reflection (grpcurl's list and
	// describe) to any caller with a valid token; --dev always does.
	GRPCReflection bool `yaml:"grpc_reflection"`

	// EmbeddedListen makes dev mode's embedded etcd and NATS also listen
	// on loopback TCP, without authentication. Only tools and tests that
	// measure or inspect them beside graftd set it (graft-bench's raw etcd
	// floor); it has no flag, variable or file key.
	EmbeddedListen bool `yaml:"-"`
	// Leases tunes dynamic credentials' leases and their reaper; zero
	// values keep leases' defaults. Only tests and tools set it; it has
	// no flag, variable or file key.
	Leases LeaseTuning `yaml:"-"`

	Etcd EtcdConfig `yaml:"etcd"`
	NATS NATSConfig `yaml:"nats"`
}

// LeaseTuning is what tests and tools change in graftd's leases.Config.
type LeaseTuning struct {
	// PendingGrace, Tick and MaxAttempts are leases.Config's: how long a
	// pending lease waits for its user, how often the reaper looks, and
	// how many failed revocations make a lease irrevocable.
	PendingGrace time.Duration
	Tick         time.Duration
	MaxAttempts  int
	// Open opens a driver on an admin DSN instead of leases.OpenDriver,
	// so that a test can wrap the driver to count, fail or stop its
	// calls. It does not reach a graftd that runs as a process of its
	// own (graftdtest.StartProcess): a function is not serialized.
	Open func(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error) `json:"-"`
}

// EtcdConfig points graftd at an external etcd cluster.
type EtcdConfig struct {
	Endpoints []string `yaml:"endpoints"`
	Prefix    string   `yaml:"prefix"`
	CAFile    string   `yaml:"ca_file"`
	CertFile  string   `yaml:"cert_file"`
	KeyFile   string   `yaml:"key_file"`
	Username  string   `yaml:"username"`
	Password  string   `yaml:"password"`
}

// NATSConfig points graftd at an external NATS cluster with JetStream.
type NATSConfig struct {
	URL       string `yaml:"url"`
	CredsFile string `yaml:"creds_file"`
	CAFile    string `yaml:"ca_file"`
	CertFile  string `yaml:"cert_file"`
	KeyFile   string `yaml:"key_file"`
	// Replicas is how many NATS nodes keep each of graft's JetStream
	// streams (GRAFT_CHANGES, GRAFT_AUDIT); 0 means 1.
	Replicas int `yaml:"replicas"`
}

// Defaults returns the configuration graftd starts from.
func Defaults() Config {
	return Config{
		DataDir:             "./graft-data",
		Listen:              "127.0.0.1:7420",
		HTTPListen:          "127.0.0.1:7421",
		MaxValueBytes:       store.DefaultMaxValueBytes,
		HistoryLimit:        store.DefaultHistoryLimit,
		LogFormat:           "", // text in dev mode, json otherwise
		LogLevel:            "info",
		ShutdownTimeout:     10 * time.Second,
		AuditMaxAge:         90 * 24 * time.Hour,
		ReplicaDestinations: []string{replicator.DefaultDestinationPattern},
		ReconcileInterval:   replicator.DefaultReconcileInterval,
		ChangesMaxAge:       24 * time.Hour,
		Etcd:                EtcdConfig{Prefix: store.DefaultPrefix},

		MaxStreamsPerConn:      server.DefaultMaxStreamsPerConn,
		MaxCallsPerPrincipal:   server.DefaultMaxCallsPerPrincipal,
		MaxWatchesPerPrincipal: server.DefaultMaxWatchesPerPrincipal,
		WatchBufferEvents:      store.DefaultHubBufferEvents,
	}
}

// DevConfig is graftd --dev with its data in dataDir, on loopback ports
// the kernel chooses and with a fresh root token: a graftd for tests and
// tools to run inside themselves.
func DevConfig(dataDir string) Config {
	cfg := Defaults()
	cfg.Dev = true
	cfg.DataDir = dataDir
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = "127.0.0.1:0"
	cfg.DevRootToken = acl.NewToken()
	return cfg
}

// options is graftd's option table: one line per setting, its flag, its
// GRAFT_* variable and, through the yaml tags above, its file key.
var options = config.Table[Config]{
	EnvPrefix: "GRAFT_",
	Defaults:  Defaults,
	Options: []config.Option[Config]{
		config.Flag("dev", "run everything in one process: embedded etcd and NATS, generated keyring and root token, loopback only", func(c *Config) any { return &c.Dev }),
		config.Flag("data-dir", "directory for dev-mode data, the generated keyring and the root token", func(c *Config) any { return &c.DataDir }),
		config.Flag("listen", "gRPC listen address", func(c *Config) any { return &c.Listen }),
		config.Flag("http-listen", "HTTP listen address for /healthz, /readyz and /metrics", func(c *Config) any { return &c.HTTPListen }),
		config.Flag("insecure-listen", "allow listening on a non-loopback address without TLS", func(c *Config) any { return &c.InsecureListen }),
		config.Flag("tls-cert-file", "server certificate (PEM) for the gRPC listener", func(c *Config) any { return &c.TLSCertFile }),
		config.Flag("tls-key-file", "server private key (PEM) for the gRPC listener", func(c *Config) any { return &c.TLSKeyFile }),
		config.Flag("client-ca-file", "CA bundle (PEM) that signs client certificates; enables mTLS identities (needs --tls-cert-file)", func(c *Config) any { return &c.ClientCAFile }),
		config.Flag("spiffe-trust-domain", "accept only client SPIFFE IDs in this trust domain as identities (empty: any, and common names)", func(c *Config) any { return &c.TrustDomain }),
		config.Flag("allow-cn-identities", "with --spiffe-trust-domain, also accept a client certificate's common name (app:<name>, user:<name>) as its identity: any certificate the CA signed with such a CN then is that principal", func(c *Config) any { return &c.AllowCNIdentities }),
		config.Flag("audit-file", "also append audit records to this JSON-lines file (0600)", func(c *Config) any { return &c.AuditFile }),
		config.Flag("audit-max-age", "how long the GRAFT_AUDIT stream keeps records", func(c *Config) any { return &c.AuditMaxAge }),
		config.Flag("replica-destinations", "path patterns replication destinations must match, comma separated (+ one segment, ** any below)", func(c *Config) any { return &c.ReplicaDestinations }),
		config.Flag("reconcile-interval", "how often every replication rule's destinations are compared with its sources and repaired", func(c *Config) any { return &c.ReconcileInterval }),
		config.Flag("changes-max-age", "how long the GRAFT_CHANGES stream keeps change events", func(c *Config) any { return &c.ChangesMaxAge }),
		config.Flag("keyring-file", "keyring that encrypts values at rest (dev default: <data-dir>/keyring.json)", func(c *Config) any { return &c.KeyringFile }),
		config.Flag("dev-root-token", "use this root token in dev mode instead of a generated one", func(c *Config) any { return &c.DevRootToken }),
		config.Flag("max-value-bytes", "largest value accepted, in bytes", func(c *Config) any { return &c.MaxValueBytes }),
		config.Flag("history-limit", "previous versions kept per path", func(c *Config) any { return &c.HistoryLimit }),
		config.Flag("log-format", "log format: json or text (dev default text)", func(c *Config) any { return &c.LogFormat }),
		config.Flag("log-level", "log level: debug, info, warn or error", func(c *Config) any { return &c.LogLevel }),
		config.Flag("shutdown-timeout", "how long in-flight calls may take to finish at shutdown", func(c *Config) any { return &c.ShutdownTimeout }),
		config.Flag("max-streams-per-connection", "calls one client connection may have open at once", func(c *Config) any { return &c.MaxStreamsPerConn }),
		config.Flag("max-calls-per-principal", "calls other than watches one principal may have open at once, over all its connections", func(c *Config) any { return &c.MaxCallsPerPrincipal }),
		config.Flag("watch-buffer-events", "recent changes graftd keeps in memory so that a reconnecting watch resumes without reading etcd; one older resumes from etcd (or, compacted, reads a new snapshot)", func(c *Config) any { return &c.WatchBufferEvents }),
		config.Flag("enable-pprof", "serve Go's CPU, heap and goroutine profiles at /debug/pprof/ on --http-listen (off loopback: to a token that may list /, as /metrics)", func(c *Config) any { return &c.EnablePprof }),
		config.Flag("grpc-reflection", "serve gRPC server reflection, so grpcurl can list and describe graftd's API (calls still need a token); always on with --dev", func(c *Config) any { return &c.GRPCReflection }),
		config.Flag("max-watches-per-principal", "watch streams one principal may have open at once, over all its connections (one per agent)", func(c *Config) any { return &c.MaxWatchesPerPrincipal }),
		config.Flag("etcd-endpoints", "etcd client URLs, comma separated", func(c *Config) any { return &c.Etcd.Endpoints }),
		config.Flag("etcd-prefix", "key prefix graft keeps its data under in etcd", func(c *Config) any { return &c.Etcd.Prefix }),
		config.Flag("etcd-ca-file", "CA bundle to verify etcd's certificate", func(c *Config) any { return &c.Etcd.CAFile }),
		config.Flag("etcd-cert-file", "client certificate for etcd", func(c *Config) any { return &c.Etcd.CertFile }),
		config.Flag("etcd-key-file", "client key for etcd", func(c *Config) any { return &c.Etcd.KeyFile }),
		config.Flag("etcd-username", "etcd user name", func(c *Config) any { return &c.Etcd.Username }),
		config.Flag("etcd-password", "etcd password (prefer GRAFT_ETCD_PASSWORD)", func(c *Config) any { return &c.Etcd.Password }),
		config.Flag("nats-url", "NATS server URLs, comma separated", func(c *Config) any { return &c.NATS.URL }),
		config.Flag("nats-creds-file", "NATS credentials file", func(c *Config) any { return &c.NATS.CredsFile }),
		config.Flag("nats-ca-file", "CA bundle to verify NATS's certificate", func(c *Config) any { return &c.NATS.CAFile }),
		config.Flag("nats-cert-file", "client certificate for NATS", func(c *Config) any { return &c.NATS.CertFile }),
		config.Flag("nats-key-file", "client key for NATS", func(c *Config) any { return &c.NATS.KeyFile }),
		config.Flag("nats-replicas", "NATS nodes that keep each of graft's JetStream streams, 1 to 5: 3 on a 3-node cluster survives a node lost", func(c *Config) any { return &c.NATS.Replicas }),
	},
}

// Flags binds every option to fs, with the defaults shown in the help. The
// returned function loads the final Config: defaults, file, environment,
// then the flags the user set, and validates it, with the problems of
// loading (unknown keys) and of validating in one error.
func Flags(fs *pflag.FlagSet) config.Loader[Config] {
	load := options.Bind(fs)
	return func(file string, env func(string) (string, bool)) (Config, error) {
		cfg, err := load(file, env)
		return cfg, config.Merge(err, cfg.Validate())
	}
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var p config.Problems
	add := p.Add
	for name, addr := range map[string]string{"--listen": c.Listen, "--http-listen": c.HTTPListen} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			add("%s %q: want host:port", name, addr)
		}
	}
	tls := c.TLSCertFile != "" || c.TLSKeyFile != ""
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		add("--tls-cert-file and --tls-key-file go together")
	}
	if c.ClientCAFile != "" && c.TLSCertFile == "" {
		add("--client-ca-file needs TLS: set --tls-cert-file and --tls-key-file")
	}
	if c.AuditMaxAge < time.Hour {
		add("--audit-max-age %s: keep audit records at least 1h", c.AuditMaxAge)
	}
	if _, err := replicator.NewValidator(c.ReplicaDestinations); err != nil {
		add("--replica-destinations: %v", err)
	}
	if c.ReconcileInterval < time.Second {
		add("--reconcile-interval %s: at least 1s", c.ReconcileInterval)
	}
	if c.ChangesMaxAge < time.Minute {
		add("--changes-max-age %s: keep change events at least 1m (replicas that are down longer are repaired by the reconciler)", c.ChangesMaxAge)
	}
	if c.Dev {
		for name, addr := range map[string]string{"--listen": c.Listen, "--http-listen": c.HTTPListen} {
			if !IsLoopback(addr) {
				add("%s %q: --dev listens on loopback only; use 127.0.0.1", name, addr)
			}
		}
		if len(c.Etcd.Endpoints) > 0 || c.NATS.URL != "" {
			add("--dev runs embedded etcd and NATS; drop --etcd-endpoints/--nats-url or drop --dev")
		}
		if c.NATS.Replicas > 1 {
			add("--nats-replicas %d: --dev runs one embedded NATS node, which keeps one replica", c.NATS.Replicas)
		}
	} else {
		if c.DevRootToken != "" {
			add("--dev-root-token needs --dev")
		}
		if !tls && !c.InsecureListen && !IsLoopback(c.Listen) {
			add("--listen %q is not loopback and has no TLS: set --tls-cert-file/--tls-key-file or, knowingly, --insecure-listen", c.Listen)
		}
		if len(c.Etcd.Endpoints) == 0 {
			add("--etcd-endpoints is required without --dev (or run graftd --dev)")
		}
		if c.NATS.URL == "" {
			add("--nats-url is required without --dev (or run graftd --dev)")
		}
		if c.KeyringFile == "" {
			add("--keyring-file is required without --dev; create one with `graftd keyring init --keyring-file FILE`")
		}
		if (c.Etcd.CertFile == "") != (c.Etcd.KeyFile == "") {
			add("--etcd-cert-file and --etcd-key-file go together")
		}
		if (c.NATS.CertFile == "") != (c.NATS.KeyFile == "") {
			add("--nats-cert-file and --nats-key-file go together")
		}
	}
	if r := c.NATS.Replicas; r < 0 || r > 5 {
		add("--nats-replicas %d: want 1 to 5 (JetStream keeps a stream on at most 5 nodes; 3 on a 3-node cluster)", r)
	}
	if c.DataDir == "" {
		add("--data-dir must not be empty")
	}
	if c.MaxValueBytes < 1 || c.MaxValueBytes > store.MaxValueBytesLimit {
		add("--max-value-bytes %d: want 1..%d", c.MaxValueBytes, store.MaxValueBytesLimit)
	}
	if c.HistoryLimit < 1 || c.HistoryLimit > 10000 {
		add("--history-limit %d: want 1..10000", c.HistoryLimit)
	}
	if c.LogFormat != "" && c.LogFormat != "json" && c.LogFormat != "text" {
		add("--log-format %q: want json or text", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.ShutdownTimeout <= 0 {
		add("--shutdown-timeout must be positive")
	}
	if c.MaxStreamsPerConn < 1 || c.MaxStreamsPerConn > 1<<20 {
		add("--max-streams-per-connection %d: want 1..%d", c.MaxStreamsPerConn, 1<<20)
	}
	if c.MaxCallsPerPrincipal < 1 {
		add("--max-calls-per-principal %d: want 1 or more", c.MaxCallsPerPrincipal)
	}
	if c.WatchBufferEvents < 1 {
		add("--watch-buffer-events %d: want 1 or more", c.WatchBufferEvents)
	}
	if c.MaxWatchesPerPrincipal < 1 {
		add("--max-watches-per-principal %d: want 1 or more", c.MaxWatchesPerPrincipal)
	}
	if p := c.Etcd.Prefix; !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") {
		add("--etcd-prefix %q must start and end with /", p)
	}
	return p.Err()
}

// IsLoopback reports whether a host:port address is on the loopback
// interface. An empty host (all interfaces) is not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
