package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/broker"
	"github.com/graft-sh/graft/internal/tlsfiles"
	"github.com/graft-sh/graft/sdk"
)

// Broker is one listener of the credential broker: the application
// connects to Listen with no password, and the agent logs in to the
// database at Backend for it with the credential in its tree.
type Broker struct {
	// Listen is a loopback host:port, or unix:/path/to/socket.
	Listen string `yaml:"listen"`
	// Protocol is the database's wire protocol: postgres, or mysql (MySQL
	// and MariaDB).
	Protocol string        `yaml:"protocol"`
	Backend  BrokerBackend `yaml:"backend"`
	// Credentials are the paths of the user and the password in the
	// application's tree (relative to it, or absolute in it); DBCred
	// instead names a dynamic-credential role shared into it.
	Credentials *BrokerCredentials `yaml:"credentials"`
	DBCred      string             `yaml:"dbcred"`
	// ClientTLS, when set, is served to applications that ask for TLS.
	ClientTLS *BrokerClientTLS `yaml:"client_tls"`
	// AllowRemote allows a Listen address that is not loopback.
	AllowRemote bool `yaml:"allow_remote"`
	// ClientPasswordFile holds a local password the application must
	// give (PostgreSQL listeners, SCRAM-SHA-256): defence in depth beside
	// loopback or the socket's mode. Read at start.
	ClientPasswordFile string `yaml:"client_password_file"`
	// SocketMode is a unix socket's permission bits (default "0600").
	SocketMode string `yaml:"socket_mode"`
}

// BrokerBackend is where the database is and how to reach it.
type BrokerBackend struct {
	Address string           `yaml:"address"`
	TLS     BrokerBackendTLS `yaml:"tls"`
}

// BrokerBackendTLS is the TLS of the connection to the database.
type BrokerBackendTLS struct {
	// Mode is disable, require, verify-ca or verify-full (the default).
	Mode       string `yaml:"mode"`
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
	// ChannelBinding (PostgreSQL) is prefer (the default), require or
	// disable, as libpq's channel_binding.
	ChannelBinding string `yaml:"channel_binding"`
}

// BrokerCredentials are the paths of a static credential.
type BrokerCredentials struct {
	User     string `yaml:"user"`
	Password string `yaml:"password"`
}

// BrokerClientTLS is the certificate served to applications.
type BrokerClientTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// mode is the backend's TLS mode, its default filled in.
func (t BrokerBackendTLS) mode() string {
	if t.Mode == "" {
		return broker.TLSVerifyFull
	}
	return t.Mode
}

// validate adds the broker's problems.
func (b Broker) validate(where string, root string, add func(string, ...any)) {
	switch b.Protocol {
	case "postgres":
	case "mysql":
		if b.ClientPasswordFile != "" {
			add("%s: client_password_file: only PostgreSQL listeners ask for a client password; protect a MySQL listener with a unix socket's mode", where)
		}
	default:
		add("%s: protocol %q: want postgres or mysql", where, b.Protocol)
	}
	if sock, ok := strings.CutPrefix(b.Listen, "unix:"); ok {
		if !filepath.IsAbs(sock) {
			add("%s: listen %q: a unix socket needs an absolute path, such as unix:/run/graft/pg/.s.PGSQL.5432", where, b.Listen)
		}
		if b.SocketMode != "" {
			if m, err := strconv.ParseUint(b.SocketMode, 8, 32); err != nil || m > 0o777 {
				add("%s: socket_mode %q: want octal permission bits such as \"0660\"", where, b.SocketMode)
			}
		}
	} else if host, _, err := net.SplitHostPort(b.Listen); err != nil {
		add("%s: listen %q: want host:port, such as 127.0.0.1:5432, or unix:/path", where, b.Listen)
	} else if ip := net.ParseIP(host); !b.AllowRemote && host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		add("%s: listen %q is not loopback: anyone who reaches it connects as the application; use 127.0.0.1 or a unix socket, or set allow_remote: true", where, b.Listen)
	}
	if _, _, err := net.SplitHostPort(b.Backend.Address); err != nil {
		add("%s: backend.address %q: want the database's host:port", where, b.Backend.Address)
	}
	switch b.Backend.TLS.mode() {
	case broker.TLSDisable, broker.TLSRequire, broker.TLSVerifyCA, broker.TLSVerifyFull:
	default:
		add("%s: backend.tls.mode %q: want disable, require, verify-ca or verify-full", where, b.Backend.TLS.Mode)
	}
	switch cb := b.Backend.TLS.ChannelBinding; {
	case cb == "":
	case b.Protocol == "mysql":
		add("%s: backend.tls.channel_binding: MySQL has no channel binding; remove it", where)
	case cb != broker.ChannelBindingPrefer && cb != broker.ChannelBindingRequire && cb != broker.ChannelBindingDisable:
		add("%s: backend.tls.channel_binding %q: want prefer, require or disable", where, cb)
	case cb == broker.ChannelBindingRequire && b.Backend.TLS.mode() == broker.TLSDisable:
		add("%s: backend.tls.channel_binding require needs TLS: set backend.tls.mode to require, verify-ca or verify-full", where)
	}
	switch {
	case b.Credentials == nil && b.DBCred == "":
		add("%s: give credentials: {user: PATH, password: PATH} (in the application's tree) or dbcred: PATH (a role shared into it)", where)
	case b.Credentials != nil && b.DBCred != "":
		add("%s: give one of credentials and dbcred", where)
	case b.Credentials != nil:
		if b.Credentials.User == "" || b.Credentials.Password == "" {
			add("%s: credentials: give both user and password, the paths of the credential in the application's tree", where)
		}
		for _, p := range []string{b.Credentials.User, b.Credentials.Password} {
			if p != "" && !inTree(root, p) {
				add("%s: credentials: %s is outside the application's tree %s; share it into %s/replicated", where, p, root, root)
			}
		}
	default:
		if !inTree(root, b.DBCred) {
			add("%s: dbcred: %s is outside the application's tree %s; share the role into %s/replicated", where, b.DBCred, root, root)
		}
	}
	if c := b.ClientTLS; c != nil && (c.CertFile == "" || c.KeyFile == "") {
		add("%s: client_tls: give cert_file and key_file", where)
	}
}

// inTree reports whether p, relative to root or absolute, is below root.
func inTree(root, p string) bool {
	abs := treePath(root, p)
	return strings.HasPrefix(abs, root+"/") && !strings.Contains(abs, "/../") && !strings.HasSuffix(abs, "/..")
}

// treePath makes p, relative to root or absolute, absolute.
func treePath(root, p string) string {
	if !strings.HasPrefix(p, "/") {
		p = root + "/" + p
	}
	return strings.TrimSuffix(p, "/")
}

// brokerListener is one listener, built from its configuration, with
// the credential it logs in with.
type brokerListener struct {
	cfg  Broker
	ln   net.Listener
	srv  protocolServer
	user string // absolute paths, for a static credential
	pass string
	// dbcred is the role's copy, for a dynamic credential.
	dbcred string
	creds  *keeper
	// cred is the static credential as of the last revision the loop
	// applied: user and password of one revision.
	cred atomic.Pointer[broker.Credential]
}

// protocolServer is a listener's protocol: broker.Postgres or
// broker.MySQL.
type protocolServer interface {
	Serve(ctx context.Context, ln net.Listener) error
	Sessions() map[string]int
}

var (
	_ protocolServer = (*broker.Postgres)(nil)
	_ protocolServer = (*broker.MySQL)(nil)
)

// newBrokers listens on every broker's address and builds its handler.
// On error, the listeners opened are closed.
// sessionsEnded is called when the last session of a user ends on any
// listener.
func newBrokers(cfg Config, creds *keeper, reg prometheus.Registerer, log *slog.Logger, sessionsEnded func()) (_ []*brokerListener, err error) {
	if len(cfg.Brokers) == 0 {
		return nil, nil
	}
	metrics := broker.NewMetrics(reg)
	var out []*brokerListener
	defer func() {
		if err != nil {
			for _, b := range out {
				b.ln.Close()
			}
		}
	}()
	for i, bc := range cfg.Brokers {
		where := fmt.Sprintf("broker[%d] (%s)", i, bc.Listen)
		b := &brokerListener{cfg: bc, creds: creds}
		var source broker.Credentials
		if bc.Credentials != nil {
			b.user, b.pass = treePath(cfg.Root(), bc.Credentials.User), treePath(cfg.Root(), bc.Credentials.Password)
			source = broker.CredentialsFunc(b.current)
		} else {
			path := treePath(cfg.Root(), bc.DBCred)
			b.dbcred = path
			source = broker.CredentialsFunc(func(context.Context) (broker.Credential, error) {
				c, err := creds.brokerCredential(path)
				if err != nil {
					return broker.Credential{}, err
				}
				return broker.Credential{User: c.Username, Password: c.Password, Source: "the dynamic credential of " + path + " (lease " + c.LeaseID + ")"}, nil
			})
		}
		tlsCfg, err := broker.NewBackendTLS(bc.Backend.TLS.mode(), bc.Backend.Address, bc.Backend.TLS.CAFile, bc.Backend.TLS.ServerName)
		if err != nil {
			return nil, fmt.Errorf("%s: backend.tls: %w", where, err)
		}
		var clientTLS *tls.Config
		if c := bc.ClientTLS; c != nil {
			if clientTLS, err = tlsfiles.Server(c.CertFile, c.KeyFile, ""); err != nil {
				return nil, fmt.Errorf("%s: client_tls: %w", where, err)
			}
		}
		onEnded := func(string) { sessionsEnded() }
		if bc.Protocol == "mysql" {
			b.srv, err = broker.NewMySQL(broker.MySQLConfig{Backend: bc.Backend.Address, TLSMode: bc.Backend.TLS.mode(), BackendTLS: tlsCfg,
				ClientTLS: clientTLS, Credentials: source, Log: log, Metrics: metrics, Name: bc.Listen, OnSessionsEnded: onEnded})
		} else {
			var cp *broker.ClientPassword
			if bc.ClientPasswordFile != "" {
				if cp, err = readClientPassword(bc.ClientPasswordFile); err != nil {
					return nil, fmt.Errorf("%s: client_password_file: %w", where, err)
				}
			}
			b.srv, err = broker.NewPostgres(broker.PostgresConfig{Backend: bc.Backend.Address, TLSMode: bc.Backend.TLS.mode(), BackendTLS: tlsCfg, ChannelBinding: bc.Backend.TLS.ChannelBinding,
				ClientTLS: clientTLS, ClientPassword: cp, Credentials: source, Log: log, Metrics: metrics, Name: bc.Listen, OnSessionsEnded: onEnded})
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if b.ln, err = listenBroker(bc); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// readClientPassword reads a client password file: its first line,
// which must not be empty; a file others may read is refused.
func readClientPassword(file string) (*broker.ClientPassword, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %04o): chmod 600 it", file, st.Mode().Perm())
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return nil, fmt.Errorf("%s is empty: write the password on its first line", file)
	}
	return broker.NewClientPassword(line)
}

// listenBroker listens on a broker's address: TCP, or a unix socket
// made with its mode (a stale socket file is replaced).
func listenBroker(bc Broker) (net.Listener, error) {
	sock, ok := strings.CutPrefix(bc.Listen, "unix:")
	if !ok {
		ln, err := net.Listen("tcp", bc.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w (is another broker or the database itself there?)", bc.Listen, err)
		}
		return ln, nil
	}
	if st, err := os.Lstat(sock); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: %s exists and is not a socket; remove it or choose another path", bc.Listen, sock)
		}
		os.Remove(sock)
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return nil, fmt.Errorf("listen %s: %w", bc.Listen, err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", bc.Listen, err)
	}
	mode := uint64(0o600)
	if bc.SocketMode != "" {
		mode, _ = strconv.ParseUint(bc.SocketMode, 8, 32)
	}
	if err := os.Chmod(sock, os.FileMode(mode)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", bc.Listen, err)
	}
	return ln, nil
}

// current is a static credential's source: what the loop last published.
func (b *brokerListener) current(context.Context) (broker.Credential, error) {
	if c := b.cred.Load(); c != nil {
		if c.User == "" || c.Password == "" {
			return broker.Credential{}, fmt.Errorf("%w: %s or %s is missing from the tree (revision %d)", broker.ErrNoCredential, b.user, b.pass, c.Revision)
		}
		return *c, nil
	}
	return broker.Credential{}, fmt.Errorf("%w yet: graft-agent has not read the application's tree", broker.ErrNoCredential)
}

// publish takes a static credential from values at revision: both from
// the same revision, always.
func (b *brokerListener) publish(values map[string][]byte, revision int64) {
	if b.user == "" {
		return
	}
	c := &broker.Credential{User: string(values[b.user]), Password: string(values[b.pass]), Revision: revision,
		Source: b.user + " and " + b.pass}
	b.cred.Store(c)
}

// report is what the agent reports of the listener: the paths it logs
// in with, the user new connections take, the sessions open.
func (b *brokerListener) report() sdk.BrokerReport {
	r := sdk.BrokerReport{Listen: b.cfg.Listen, Sessions: b.srv.Sessions()}
	if b.dbcred != "" {
		r.Keys = []string{b.dbcred}
		if c, ok := b.creds.peek(b.dbcred); ok {
			r.User = c.Username
		}
		return r
	}
	r.Keys = []string{b.user, b.pass}
	if c := b.cred.Load(); c != nil {
		r.User = c.User
	}
	return r
}

// Serve runs the listener until ctx ends.
func (b *brokerListener) Serve(ctx context.Context) error {
	err := b.srv.Serve(ctx, b.ln)
	if sock, ok := strings.CutPrefix(b.cfg.Listen, "unix:"); ok {
		os.Remove(sock)
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
