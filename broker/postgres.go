package broker

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Channel binding settings, libpq's channel_binding values.
const (
	ChannelBindingPrefer  = "prefer"
	ChannelBindingRequire = "require"
	ChannelBindingDisable = "disable"
)

// TLS modes of the broker's connection to the database, libpq's sslmode
// values without the ones that fall back to plaintext.
const (
	TLSDisable    = "disable"     // plaintext
	TLSRequire    = "require"     // TLS, the certificate not verified
	TLSVerifyCA   = "verify-ca"   // TLS, the certificate signed by the CA
	TLSVerifyFull = "verify-full" // TLS, the certificate signed by the CA and for the host
)

// PostgresConfig configures a PostgreSQL listener.
type PostgresConfig struct {
	// Backend is the database's host:port.
	Backend string
	// BackendTLS is the TLS configuration of the connection to the
	// database, for the mode TLSMode (nil with TLSDisable). For
	// TLSVerifyCA and TLSRequire the broker verifies what the mode asks
	// itself: set InsecureSkipVerify and RootCAs (NewBackendTLS does).
	BackendTLS *tls.Config
	TLSMode    string
	// ChannelBinding is libpq's channel_binding over TLS: prefer (the
	// default) binds SCRAM-SHA-256 to the TLS connection
	// (SCRAM-SHA-256-PLUS) when the server offers it; require refuses a
	// login without it, so a server certificate's stolen key is not
	// enough to stand in for the database; disable never binds.
	ChannelBinding string
	// ClientTLS, when set, is served to clients that ask for TLS
	// (sslmode=prefer, require, verify-*); without it they are told the
	// broker has none, and prefer goes on in plaintext.
	ClientTLS *tls.Config
	// ClientPassword, when set, is asked of every client (SCRAM-SHA-256)
	// before the broker logs in for it.
	ClientPassword *ClientPassword
	Credentials    Credentials
	Log            *slog.Logger
	// Metrics, when set, counts what the listener does.
	Metrics *Metrics
	// ConnectTimeout bounds logging in to the database (default 10s).
	ConnectTimeout time.Duration
	// Name names the listener in logs and metrics (its listen address).
	Name string
	// OnSessionsEnded, when set, is called when the last open session of
	// a database user ends (a rollout waits for the old user's).
	OnSessionsEnded func(user string)
}

// Postgres is a PostgreSQL listener of the broker.
type Postgres struct {
	*listener
	cfg     PostgresConfig
	cancels cancels[backendKey]
}

// backendKey is what cancels one backend session.
type backendKey struct {
	pid    uint32
	secret []byte
	addr   string
	tls    *tls.Config
}

// NewPostgres returns a listener's handler for cfg.
func NewPostgres(cfg PostgresConfig) (*Postgres, error) {
	var err error
	if cfg.BackendTLS, err = (backendConfig{"postgres", cfg.Backend, cfg.TLSMode, cfg.BackendTLS, cfg.Credentials}).check(); err != nil {
		return nil, err
	}
	switch cfg.ChannelBinding {
	case "":
		cfg.ChannelBinding = ChannelBindingPrefer
	case ChannelBindingPrefer, ChannelBindingDisable:
	case ChannelBindingRequire:
		if cfg.TLSMode == TLSDisable {
			return nil, errors.New("postgres broker: channel binding require needs TLS to the database: set a TLS mode other than disable, or channel binding prefer")
		}
	default:
		return nil, fmt.Errorf("postgres broker: channel binding %q: want prefer, require or disable", cfg.ChannelBinding)
	}
	defaults(&cfg.Log, &cfg.ConnectTimeout, &cfg.Name, "postgres")
	return &Postgres{listener: newListener(cfg.Name, cfg.OnSessionsEnded), cfg: cfg}, nil
}

// Serve accepts connections on ln until ctx ends, then closes ln and the
// sessions in flight.
func (p *Postgres) Serve(ctx context.Context, ln net.Listener) error {
	return p.accept(ctx, ln, p.serve)
}

// startupLimit bounds a startup message: parameters and their values.
const startupLimit = 16 << 10

// serve runs one client connection: the startup exchange, the login to
// the database, then the relay.
func (p *Postgres) serve(ctx context.Context, client net.Conn) {
	m := p.cfg.Metrics
	m.opened(p.cfg.Name)
	began := time.Now()
	defer func() { m.closed(p.cfg.Name, time.Since(began)) }()

	client.SetDeadline(time.Now().Add(p.cfg.ConnectTimeout))
	be := pgproto3.NewBackend(client, client)
	be.SetMaxBodyLen(startupLimit)
	var startup *pgproto3.StartupMessage
	for startup == nil {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			p.cfg.Log.Debug("broker: a client left before its startup message", "listener", p.cfg.Name, "err", err)
			return
		}
		switch msg := msg.(type) {
		case *pgproto3.SSLRequest:
			if p.cfg.ClientTLS == nil {
				if _, err := client.Write([]byte{'N'}); err != nil {
					return
				}
				continue
			}
			if _, err := client.Write([]byte{'S'}); err != nil {
				return
			}
			tc := tls.Server(client, p.cfg.ClientTLS)
			if err := tc.HandshakeContext(ctx); err != nil {
				p.cfg.Log.Warn("broker: TLS handshake with a client failed", "listener", p.cfg.Name, "err", err)
				return
			}
			client = tc
			be = pgproto3.NewBackend(tc, tc)
			be.SetMaxBodyLen(startupLimit)
		case *pgproto3.GSSEncRequest:
			// No GSSAPI encryption: libpq goes on to TLS or plaintext.
			if _, err := client.Write([]byte{'N'}); err != nil {
				return
			}
		case *pgproto3.CancelRequest:
			p.cancel(ctx, msg)
			return
		case *pgproto3.StartupMessage:
			startup = msg
		default:
			return
		}
	}

	if cp := p.cfg.ClientPassword; cp != nil {
		if err := cp.authenticate(be); err != nil {
			m.authFailed(p.cfg.Name)
			p.cfg.Log.Warn("broker: a client failed the broker's client password", "listener", p.cfg.Name, "remote", client.RemoteAddr().String())
			p.refuse(be, "28P01", errClientPassword.Error(), "")
			return
		}
	}
	cred, err := p.cfg.Credentials.Current(ctx)
	if err != nil {
		m.authFailed(p.cfg.Name)
		p.refuse(be, connectionFailure, fmt.Sprintf("graft broker: no database credential to log in with: %v", err),
			"graft-agent serves it from the application's tree: check that the credential's paths exist there (graft ls) and that graft-agent follows the tree")
		return
	}
	backend, hj, err := p.login(ctx, startup, cred)
	if err != nil {
		m.authFailed(p.cfg.Name)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			p.refuse(be, pgErr.Code, redact(pgErr.Message, cred.Password),
				fmt.Sprintf("graft broker logged in as user %q with the credential from %s (revision %d): check it is the database's current one", cred.User, cred.Source, cred.Revision))
		} else {
			p.refuse(be, "08001", redact(fmt.Sprintf("graft broker cannot log in to the database at %s: %v", p.cfg.Backend, err), cred.Password),
				"check the broker's backend address and TLS settings in graft-agent's configuration")
		}
		p.cfg.Log.Warn("broker: login to the database failed", "listener", p.cfg.Name, "user", cred.User, "source", cred.Source, "revision", cred.Revision,
			"err", redact(err.Error(), cred.Password))
		return
	}
	defer backend.Close()
	key := p.cancels.add(backendKey{pid: hj.PID, secret: hj.SecretKey, addr: p.cfg.Backend, tls: p.cfg.BackendTLS})
	defer p.cancels.remove(key)

	if startup.ProtocolVersion != pgproto3.ProtocolVersion30 {
		// The backend session speaks 3.0: say so, and which protocol
		// options were not taken.
		var opts []string
		for k := range startup.Parameters {
			if len(k) > 5 && k[:5] == "_pq_." {
				opts = append(opts, k)
			}
		}
		slices.Sort(opts)
		be.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: opts})
	}
	be.Send(&pgproto3.AuthenticationOk{})
	names := make([]string, 0, len(hj.ParameterStatuses))
	for k := range hj.ParameterStatuses {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		be.Send(&pgproto3.ParameterStatus{Name: k, Value: hj.ParameterStatuses[k]})
	}
	var secret [4]byte
	secret[0], secret[1], secret[2], secret[3] = byte(key.secret>>24), byte(key.secret>>16), byte(key.secret>>8), byte(key.secret)
	be.Send(&pgproto3.BackendKeyData{ProcessID: key.pid, SecretKey: secret[:]})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: hj.TxStatus})
	if err := be.Flush(); err != nil {
		return
	}
	client.SetDeadline(time.Time{})
	p.cfg.Log.Debug("broker: session open", "listener", p.cfg.Name, "user", cred.User, "revision", cred.Revision)
	p.session(cred.User, 1)
	defer p.session(cred.User, -1)
	toClient := &pgFrames{w: client}
	relay(client, backend, toClient, m, p.cfg.Name, func(err error) {
		p.cfg.Log.Info("broker: the database ended a session", "listener", p.cfg.Name, "user", cred.User, "err", err)
		m.backendGone(p.cfg.Name)
		if !toClient.between() || toClient.last == 'E' {
			// Mid-message, a message of the broker's own would corrupt
			// the stream; after an ErrorResponse (the server's FATAL
			// on a terminated session) the client knows why already.
			return
		}
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: connectionFailure,
			Message: "the database closed the connection without a word: " + errText(err),
			Hint:    fmt.Sprintf("graft-agent's broker (%s) relayed this session to %s as %s; the database's log says why it ended; connect again", p.cfg.Name, p.cfg.Backend, cred.User)})
		be.Flush()
	})
}

// connectionFailure is the SQLSTATE of a session whose database went
// away.
const connectionFailure = "08006"

// errText is err's text, or "end of stream" for a clean close.
func errText(err error) string {
	if err == nil {
		return "end of stream"
	}
	return err.Error()
}

// pgFrames writes the backend's messages to w, following where one ends
// and the next begins, so that a backend gone between two messages can
// be reported to the client in a message of the broker's own.
type pgFrames struct {
	w    io.Writer
	head [5]byte // a message's type and length
	got  int     // bytes of head seen
	left int64   // bytes of the current message's body still to come
	last byte    // the type of the last message begun
}

func (f *pgFrames) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	f.follow(p[:n])
	return n, err
}

func (f *pgFrames) follow(p []byte) {
	for len(p) > 0 {
		if f.left > 0 {
			n := min(int64(len(p)), f.left)
			f.left -= n
			p = p[n:]
			continue
		}
		n := copy(f.head[f.got:], p)
		f.got += n
		p = p[n:]
		if f.got == len(f.head) {
			f.last = f.head[0]
			f.left = int64(binary.BigEndian.Uint32(f.head[1:])) - 4
			f.got = 0
		}
	}
}

// between reports whether every message written so far was whole.
func (f *pgFrames) between() bool { return f.got == 0 && f.left <= 0 }

// login opens the backend session for the client's startup message with
// cred: the client's database and parameters, the broker's user and
// password, TLS by the configured mode.
func (p *Postgres) login(ctx context.Context, startup *pgproto3.StartupMessage, cred Credential) (net.Conn, *pgconn.HijackedConn, error) {
	host, port, _ := net.SplitHostPort(p.cfg.Backend)
	cfg, err := pgconn.ParseConfig("host=" + quoteConn(host) + " port=" + port + " sslmode=disable")
	if err != nil {
		return nil, nil, err
	}
	cfg.User, cfg.Password = cred.User, cred.Password
	cfg.Database = startup.Parameters["database"]
	if cfg.Database == "" {
		cfg.Database = cred.User // libpq's default: the user's name
	}
	cfg.TLSConfig = p.cfg.BackendTLS
	cfg.ChannelBinding = p.cfg.ChannelBinding
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = p.cfg.ConnectTimeout
	cfg.RuntimeParams = map[string]string{}
	for k, v := range startup.Parameters {
		switch {
		case k == "user", k == "database":
		case len(k) > 5 && k[:5] == "_pq_.":
		default:
			cfg.RuntimeParams[k] = v
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return nil, nil, fmt.Errorf("backend port %q: want 1 to 65535", port)
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	began := time.Now()
	pc, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	p.cfg.Metrics.connected(p.cfg.Name, time.Since(began))
	// pgconn may read in the background (after a slow write) or hold
	// read-ahead bytes: both must be done before the raw connection is
	// relayed, or the relay loses the server's bytes.
	if err := pc.SyncConn(cctx); err != nil {
		pc.Close(context.Background())
		return nil, nil, err
	}
	hj, err := pc.Hijack()
	if err != nil {
		pc.Close(context.Background())
		return nil, nil, err
	}
	return hj.Conn, hj, nil
}

// quoteConn quotes a value of a keyword/value connection string.
func quoteConn(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' || s[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}

// refuse sends the client a FATAL ErrorResponse and ends the exchange.
func (p *Postgres) refuse(be *pgproto3.Backend, code, msg, hint string) {
	be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg, Hint: hint})
	be.Flush()
}

// cancel routes a client's CancelRequest to the backend session the key
// names, over a connection of its own, encrypted as the session is. An
// unknown key is ignored, as PostgreSQL does.
func (p *Postgres) cancel(ctx context.Context, req *pgproto3.CancelRequest) {
	if len(req.SecretKey) != 4 {
		return
	}
	k := cancelKey{pid: req.ProcessID, secret: uint32(req.SecretKey[0])<<24 | uint32(req.SecretKey[1])<<16 | uint32(req.SecretKey[2])<<8 | uint32(req.SecretKey[3])}
	target, ok := p.cancels.get(k)
	if !ok {
		p.cfg.Log.Debug("broker: a cancel request for no session of this broker", "listener", p.cfg.Name)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(cctx, "tcp", target.addr)
	if err != nil {
		p.cfg.Log.Warn("broker: cannot reach the database to cancel a query", "listener", p.cfg.Name, "err", err)
		return
	}
	defer conn.Close()
	if dl, ok := cctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if target.tls != nil {
		req := (&pgproto3.SSLRequest{}).Encode
		buf, _ := req(nil)
		if _, err := conn.Write(buf); err != nil {
			return
		}
		var answer [1]byte
		if _, err := io.ReadFull(conn, answer[:]); err != nil || answer[0] != 'S' {
			p.cfg.Log.Warn("broker: the database refused TLS for a cancel request", "listener", p.cfg.Name)
			return
		}
		tc := tls.Client(conn, target.tls)
		if err := tc.HandshakeContext(cctx); err != nil {
			p.cfg.Log.Warn("broker: TLS handshake for a cancel request failed", "listener", p.cfg.Name, "err", err)
			return
		}
		conn = tc
	}
	buf, _ := (&pgproto3.CancelRequest{ProcessID: target.pid, SecretKey: target.secret}).Encode(nil)
	if _, err := conn.Write(buf); err != nil {
		p.cfg.Log.Warn("broker: cannot send a cancel request", "listener", p.cfg.Name, "err", err)
		return
	}
	// The server closes the connection once it has read the request.
	io.Copy(io.Discard, conn)
	p.cfg.Metrics.cancelled(p.cfg.Name)
}

// relay copies both ways until either side ends, then closes both: a
// database that goes away closes the client's connection at once. What
// the database sends goes to the client through toClient (client, or a
// writer that wraps it). When the database's side ends first, gone,
// when set, is called with why (nil: it closed the connection) before
// both close, and may write a last word to the client. The calling
// goroutine copies one way itself: an idle session costs two
// goroutines' stacks, not three.
func relay(client, backend net.Conn, toClient io.Writer, m *Metrics, name string, gone func(error)) {
	var (
		once    sync.Once
		closing atomic.Bool
	)
	closeBoth := func() {
		once.Do(func() {
			closing.Store(true)
			client.Close()
			backend.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, _ := io.Copy(backend, client)
		m.bytes(name, "to_database", n)
		closeBoth()
	}()
	if gone == nil {
		// Nothing to follow: TCP to TCP, io.Copy splices.
		n, _ := io.Copy(toClient, backend)
		m.bytes(name, "to_client", n)
	} else {
		from := &reads{r: backend}
		n, _ := io.CopyBuffer(toClient, from, make([]byte, relayBuffer))
		m.bytes(name, "to_client", n)
		if from.ended && !closing.Load() {
			gone(from.err)
		}
	}
	closeBoth()
	<-done
}

// relayBuffer is the buffer of a relay that follows what it copies:
// PostgreSQL's own send buffer, 8 KiB, so an idle session holds little.
const relayBuffer = 8 << 10

// reads is r, remembering whether, and why, it ended.
type reads struct {
	r     io.Reader
	ended bool
	err   error // nil at io.EOF
}

func (r *reads) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil {
		r.ended = true
		if err != io.EOF {
			r.err = err
		}
	}
	return n, err
}
