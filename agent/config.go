package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/graft-sh/graft/internal/config"
	"github.com/graft-sh/graft/rotation"
)

// segmentRE is one segment of a graft path.
var segmentRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,255}$`)

// Config is graft-agent's configuration. Scalars come from the option
// table (defaults, the YAML file, GRAFT_AGENT_*, flags); templates, reload
// actions, health and wait from the YAML file.
type Config struct {
	// Server is graftd's gRPC address.
	Server string `yaml:"server"`
	// TokenFile holds the agent's token (app:<name>); with TLS client
	// certificates instead, leave it empty.
	TokenFile string `yaml:"token_file"`
	TLS       TLS    `yaml:"tls"`
	// Insecure allows plaintext to a non-loopback server.
	Insecure bool `yaml:"insecure"`
	// App names the agent's tree, /app/<app>.
	App string `yaml:"app"`
	// ID names the agent in its reports, unique within the application.
	// The default is the host name and a short hash of the absolute path
	// of the configuration file (without one, of the app, its templates'
	// destinations and exec command): two agents on one host differ, and
	// an agent keeps its id across restarts.
	ID        string     `yaml:"id"`
	Templates []Template `yaml:"templates"`
	Reload    []Action   `yaml:"reload"`
	Exec      *Exec      `yaml:"exec"`
	Health    Health     `yaml:"health"`
	Wait      Wait       `yaml:"wait"`
	// Rotations makes the agent a rotator, with the owner's identity:
	// all the rotations it may rotate (`rotations: all`) or those listed.
	// Such an agent needs no app or templates; with them it does both.
	Rotations Rotations `yaml:"rotations"`
	// DBCred configures the dynamic credentials templates take with
	// dbcred.
	DBCred DBCred `yaml:"dbcred"`
	// Brokers are the credential broker's listeners: the application
	// connects to them with no password.
	Brokers []Broker `yaml:"broker"`
	// RotationClaimTTL is how long its claim on a rotation outlives it
	// (default 15s): how soon another rotator takes over after it dies.
	RotationClaimTTL time.Duration `yaml:"rotation_claim_ttl"`
	// RotationHook, for tests, is called at every boundary of a run.
	RotationHook func(name string, b rotation.Boundary) `yaml:"-"`
	// Listen is the loopback address of /healthz, /readyz and /metrics,
	// such as 127.0.0.1:7431; they are off unless it is set ("off" or
	// empty serves none), so that agents on one host never collide.
	Listen   string `yaml:"listen"`
	LogLevel string `yaml:"log_level"`
	// Once renders and exits; DryRun reports what would change and exits.
	Once   bool `yaml:"-"`
	DryRun bool `yaml:"-"`
	// Kubernetes, when set, is the client of every kubernetes reload
	// action, instead of one connected from the pod's service account or a
	// kubeconfig (tests give client-go's fake).
	Kubernetes KubernetesClient `yaml:"-"`
	// base is the directory relative template sources are read from (the
	// configuration file's); file is that file's absolute path.
	base string
	file string
}

// TLS are the files of a TLS connection to graftd: the CA that signed
// graftd's certificate and, for an mTLS identity (spiffe://<td>/app/<name>),
// the agent's certificate and key.
type TLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Template is one file the agent renders.
type Template struct {
	// Destination is the file written.
	Destination string `yaml:"destination"`
	// Contents is the template text, or Source the file holding it
	// (relative to the configuration file); edits to it are picked up.
	Contents string `yaml:"contents"`
	Source   string `yaml:"source"`
	// Mode is the file's permission bits, in octal (default "0600").
	Mode string `yaml:"mode"`
	// UID and GID own the file, when set.
	UID *int `yaml:"uid"`
	GID *int `yaml:"gid"`
}

// Action is one reload step; exactly one of its fields is set.
type Action struct {
	Signal     *SignalAction     `yaml:"signal"`
	HTTP       *HTTPAction       `yaml:"http"`
	Command    []string          `yaml:"command"`
	Docker     *DockerAction     `yaml:"docker"`
	Kubernetes *KubernetesAction `yaml:"kubernetes"`
}

// SignalAction sends Signal to the process whose pid is in Pidfile.
type SignalAction struct {
	Pidfile string `yaml:"pidfile"`
	Signal  string `yaml:"signal"`
}

// HTTPAction calls URL with Method (default POST); any 2xx answer is
// success.
type HTTPAction struct {
	URL     string        `yaml:"url"`
	Method  string        `yaml:"method"`
	Timeout time.Duration `yaml:"timeout"`
}

// Health is the check that must pass after a reload, within Timeout: an
// HTTP GET answering 2xx, a TCP connect, or a command exiting 0.
type Health struct {
	HTTP    string        `yaml:"http"`
	TCP     string        `yaml:"tcp"`
	Command []string      `yaml:"command"`
	Timeout time.Duration `yaml:"timeout"`
}

// DBCred configures the dynamic credentials templates take with
// {{ with dbcred "replicated/creds/readonly" }}…{{ end }}.
type DBCred struct {
	// StateFile keeps the agent's leases and their credentials (0600),
	// so that a restarted agent goes on with them instead of issuing new
	// database users. Default: .graft-dbcred-<id>.json beside the first
	// template's destination.
	StateFile string `yaml:"state_file"`
	// Grace is how long an old credential stays valid after the
	// application runs healthy on its replacement (default 30s).
	Grace *time.Duration `yaml:"grace"`
}

// maxCredentialGrace bounds DBCred.Grace.
const maxCredentialGrace = 24 * time.Hour

// stateFile is the dynamic-credential state file of an agent named id.
func (c Config) stateFile(id string) string {
	if f := c.DBCred.StateFile; f != "" {
		if !filepath.IsAbs(f) && c.base != "" {
			f = filepath.Join(c.base, f)
		}
		return f
	}
	dir := c.base
	if len(c.Templates) > 0 {
		dir = filepath.Dir(c.Templates[0].Destination)
	}
	if dir == "" {
		dir = "."
	}
	name := id
	if !segmentRE.MatchString(name) || strings.HasPrefix(name, ".") {
		sum := sha256.Sum256([]byte(id))
		name = hex.EncodeToString(sum[:])[:16]
	}
	return filepath.Join(dir, ".graft-dbcred-"+name+".json")
}

// grace is DBCred.Grace, or its default.
func (d DBCred) grace() time.Duration {
	if d.Grace == nil {
		return DefaultCredentialGrace
	}
	return *d.Grace
}

// Wait debounces changes as consul-template does: render once nothing
// changed for Min, and at most Max after the first change.
type Wait struct {
	Min time.Duration `yaml:"min"`
	Max time.Duration `yaml:"max"`
}

// Defaults of the agent. ExampleListen is the address the docs suggest
// for the HTTP endpoints, which are off by default.
const (
	ExampleListen    = "127.0.0.1:7431"
	defaultMode      = "0600"
	defaultHealthTTL = 60 * time.Second
	defaultHTTPTime  = 10 * time.Second
)

// DefaultConfig is the configuration before any layer applies.
func DefaultConfig() Config {
	return Config{Server: "127.0.0.1:7420", Listen: "off", LogLevel: "info",
		Wait: Wait{Min: 100 * time.Millisecond, Max: time.Second}}
}

// options is the table of the agent's scalar settings.
var options = config.Table[Config]{
	EnvPrefix: "GRAFT_AGENT_",
	Defaults:  DefaultConfig,
	Options: []config.Option[Config]{
		config.Flag("server", "graftd's gRPC address", func(c *Config) any { return &c.Server }),
		config.Flag("token-file", "file holding the agent's token (app:<name>)", func(c *Config) any { return &c.TokenFile }),
		config.Flag("tls-ca-file", "CA of graftd's certificate (enables TLS)", func(c *Config) any { return &c.TLS.CAFile }),
		config.Flag("tls-cert-file", "the agent's client certificate, for an mTLS identity", func(c *Config) any { return &c.TLS.CertFile }),
		config.Flag("tls-key-file", "the key of --tls-cert-file", func(c *Config) any { return &c.TLS.KeyFile }),
		config.Flag("insecure", "allow plaintext to a non-loopback server; the token crosses the network in the clear", func(c *Config) any { return &c.Insecure }),
		config.Flag("app", "the application whose tree (/app/<app>) the agent renders", func(c *Config) any { return &c.App }),
		config.Flag("id", "the agent's name in its reports, unique within the application (default: the host name and a hash of the config file's path)", func(c *Config) any { return &c.ID }),
		config.Flag("listen", `loopback address to serve /healthz, /readyz and /metrics on, such as `+ExampleListen+` (default off: none served)`, func(c *Config) any { return &c.Listen }),
		config.Flag("log-level", "debug, info, warn or error", func(c *Config) any { return &c.LogLevel }),
	},
}

// Flags registers the agent's options on fs and returns the loader of its
// configuration: Load(file, env) then applies validation.
func Flags(fs *pflag.FlagSet) func(file string, env func(string) (string, bool)) (Config, error) {
	load := options.Bind(fs)
	return func(file string, env func(string) (string, bool)) (Config, error) {
		cfg, err := load(file, env)
		if file != "" {
			cfg.base = filepath.Dir(file)
			if abs, err := filepath.Abs(file); err == nil {
				cfg.file = abs
			}
		}
		return cfg, config.Merge(err, cfg.Validate())
	}
}

// DefaultID is the agent's id when the configuration sets none: the host
// name and a short hash of what tells this agent from another on the same
// host, and stays the same when it restarts: the absolute path of its
// configuration file, or, without one, its app, template destinations,
// exec command and rotations.
func (c Config) DefaultID(host string) string {
	h := sha256.New()
	if c.file != "" {
		fmt.Fprintf(h, "file\x00%s", c.file)
	} else {
		fmt.Fprintf(h, "app\x00%s\x00", c.App)
		for _, t := range c.Templates {
			fmt.Fprintf(h, "dest\x00%s\x00", filepath.Clean(t.Destination))
		}
		if c.Exec != nil {
			fmt.Fprintf(h, "exec\x00%q\x00", c.Exec.Command)
		}
		fmt.Fprintf(h, "rotations\x00%v\x00%q", c.Rotations.Enabled(), c.Rotations.Names)
	}
	sum := hex.EncodeToString(h.Sum(nil))[:8]
	if host == "" {
		host = "agent"
	}
	if len(host) > 200 {
		host = host[:200]
	}
	return host + "-" + sum
}

// ServesHTTP reports whether the configuration turns the HTTP endpoints
// on.
func (c Config) ServesHTTP() bool { return c.Listen != "" && c.Listen != "off" }

// Root is the agent's tree. (A pointer receiver: the render loop asks
// for it at every render, and Config is large to copy.)
func (c *Config) Root() string { return "/app/" + c.App }

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var p config.Problems
	rotator := c.Rotations.Enabled()
	if c.App == "" && !rotator {
		p.Add("app: name the application whose tree the agent renders (app: message-processor for /app/message-processor), or set rotations: for a rotator")
	} else if c.App != "" && !segmentRE.MatchString(c.App) || c.App == "." || c.App == ".." {
		p.Add("app %q: want one path segment of A-Z a-z 0-9 . _ -", c.App)
	}
	if c.ID != "" && (strings.ContainsAny(c.ID, "/\n") || len(c.ID) > 253) {
		p.Add("id %q: want a name of at most 253 characters without /", c.ID)
	}
	if c.Server == "" {
		p.Add("server: give graftd's address, such as 127.0.0.1:7420")
	}
	if c.TokenFile == "" && c.TLS.CertFile == "" {
		p.Add("token_file: give the file holding the agent's token, or tls.cert_file and tls.key_file for a certificate identity")
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		p.Add("tls: cert_file and key_file go together")
	}
	if c.TLS.CertFile != "" && c.TLS.CAFile == "" {
		p.Add("tls.ca_file: a client certificate needs TLS; give the CA of graftd's certificate")
	}
	if c.App == "" && rotator && (len(c.Templates) > 0 || c.Exec != nil || len(c.Reload) > 0) {
		p.Add("app: templates, exec and reload render an application's tree: name it with app:")
	}
	if c.App == "" && (c.Once || c.DryRun) {
		p.Add("--once and --dry-run render an application's tree: name it with app:")
	}
	for _, n := range c.Rotations.Names {
		if err := rotation.CheckName(n); err != nil {
			p.Add("rotations: %v", err)
		}
	}
	if c.RotationClaimTTL != 0 && (c.RotationClaimTTL < rotation.MinClaimTTL || c.RotationClaimTTL > rotation.MaxClaimTTL) {
		p.Add("rotation_claim_ttl %s: want %s to %s", c.RotationClaimTTL, rotation.MinClaimTTL, rotation.MaxClaimTTL)
	}
	if c.App != "" && len(c.Templates) == 0 && (c.Exec == nil || len(c.Exec.Env) == 0) && len(c.Brokers) == 0 {
		p.Add("templates: give at least one template (destination and contents or source), exec.env, or a broker")
	}
	if c.Exec != nil {
		c.Exec.validate(p.Add)
	}
	seen := map[string]bool{}
	for i, t := range c.Templates {
		where := fmt.Sprintf("templates[%d]", i)
		switch {
		case t.Destination == "":
			p.Add("%s: destination is required", where)
		case !filepath.IsAbs(t.Destination):
			p.Add("%s: destination %q must be an absolute path", where, t.Destination)
		case seen[filepath.Clean(t.Destination)]:
			p.Add("%s: destination %s is written by another template too", where, t.Destination)
		}
		seen[filepath.Clean(t.Destination)] = true
		if (t.Contents == "") == (t.Source == "") {
			p.Add("%s (%s): give exactly one of contents and source", where, t.Destination)
		} else if text, err := t.text(c.base); err == nil {
			// A source file that is not there yet is read at render
			// time; one that is must parse now.
			if err := parseTemplate(t.Destination, text); err != nil {
				p.Add("%s (%s): %v", where, t.Destination, err)
			}
		}
		if t.Mode != "" {
			if m, err := strconv.ParseUint(t.Mode, 8, 32); err != nil || m > 0o7777 {
				p.Add("%s (%s): mode %q: want octal permission bits such as \"0600\"", where, t.Destination, t.Mode)
			}
		}
	}
	for i, a := range c.Reload {
		where := fmt.Sprintf("reload[%d]", i)
		n := 0
		if a.Signal != nil {
			n++
			if a.Signal.Pidfile == "" {
				p.Add("%s: signal.pidfile is required", where)
			}
			if _, err := parseSignal(a.Signal.Signal); err != nil {
				p.Add("%s: signal %q: %v", where, a.Signal.Signal, err)
			}
		}
		if a.HTTP != nil {
			n++
			if u, err := url.Parse(a.HTTP.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				p.Add("%s: http.url %q: want an http:// or https:// URL", where, a.HTTP.URL)
			}
		}
		if a.Command != nil {
			n++
			if len(a.Command) == 0 || a.Command[0] == "" {
				p.Add("%s: command: give the program and its arguments as a list", where)
			}
		}
		if a.Docker != nil {
			n++
			a.Docker.validate(where, p.Add)
		}
		if a.Kubernetes != nil {
			n++
			a.Kubernetes.validate(where, p.Add)
		}
		if n != 1 {
			p.Add("%s: give exactly one of signal, http, command, docker and kubernetes", where)
		}
	}
	checks := 0
	if c.Health.HTTP != "" {
		checks++
		if u, err := url.Parse(c.Health.HTTP); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			p.Add("health.http %q: want an http:// or https:// URL", c.Health.HTTP)
		}
	}
	if c.Health.TCP != "" {
		checks++
		if _, _, err := net.SplitHostPort(c.Health.TCP); err != nil {
			p.Add("health.tcp %q: want host:port", c.Health.TCP)
		}
	}
	if len(c.Health.Command) > 0 {
		checks++
	}
	if checks > 1 {
		p.Add("health: give one of http, tcp and command")
	}
	if c.Health.Timeout < 0 {
		p.Add("health.timeout must not be negative")
	}
	if g := c.DBCred.grace(); g < 0 || g > maxCredentialGrace {
		p.Add("dbcred.grace %s: want 0 to %s (such as 30s)", g, maxCredentialGrace)
	}
	for i, b := range c.Brokers {
		where := fmt.Sprintf("broker[%d]", i)
		if c.App == "" {
			p.Add("%s: the broker logs in with a credential from an application's tree: name it with app:", where)
			break
		}
		b.validate(where, c.Root(), p.Add)
	}
	if c.DBCred.StateFile != "" && c.App == "" {
		p.Add("dbcred.state_file: dynamic credentials are rendered into an application's files: name it with app:")
	}
	if c.Wait.Min < 0 || c.Wait.Max < 0 || (c.Wait.Max > 0 && c.Wait.Max < c.Wait.Min) {
		p.Add("wait: want 0 <= min <= max (such as {min: 1s, max: 10s})")
	}
	if c.ServesHTTP() {
		host, _, err := net.SplitHostPort(c.Listen)
		if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			p.Add("listen %q: want a loopback host:port such as %s, or off", c.Listen, ExampleListen)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		p.Add("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	return p.Err()
}

// mode is a template's file mode.
func (t Template) mode() os.FileMode {
	m := t.Mode
	if m == "" {
		m = defaultMode
	}
	n, _ := strconv.ParseUint(m, 8, 32)
	return os.FileMode(n)
}

// signals are the signals a reload may send, by name.
var signals = map[string]syscall.Signal{
	"SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2,
	"SIGTERM": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
}

func parseSignal(name string) (syscall.Signal, error) {
	if name == "" {
		return syscall.SIGHUP, nil
	}
	n := strings.ToUpper(name)
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	if s, ok := signals[n]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("want one of SIGHUP, SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGQUIT")
}
