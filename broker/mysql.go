package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// The MySQL listener completes the client's handshake itself and logs in
// to the database with the credential, then relays the command phase as
// raw bytes. Its packets are written here rather than taken from a
// library: go-mysql-org/go-mysql is not served by the module proxy, and
// vitess.io/vitess/go/mysql adds 11.4 MB to graft-agent (see
// docs/ARCHITECTURE.md) for the six packets the handshake needs.

// MySQLConfig configures a MySQL or MariaDB listener.
type MySQLConfig struct {
	// Backend is the database's host:port.
	Backend string
	// BackendTLS is the TLS configuration of the connection to the
	// database, for the mode TLSMode (nil with TLSDisable), as
	// NewBackendTLS makes it.
	BackendTLS *tls.Config
	TLSMode    string
	// ClientTLS, when set, is offered to clients (CLIENT_SSL); without it
	// the broker's greeting does not offer TLS.
	ClientTLS   *tls.Config
	Credentials Credentials
	Log         *slog.Logger
	// Metrics, when set, counts what the listener does.
	Metrics *Metrics
	// ConnectTimeout bounds the two handshakes (default 10s).
	ConnectTimeout time.Duration
	// Name names the listener in logs and metrics (its listen address).
	Name string
	// OnSessionsEnded, when set, is called when the last open session of
	// a database user ends (a rollout waits for the old user's).
	OnSessionsEnded func(user string)
}

// MySQL is a MySQL/MariaDB listener of the broker.
type MySQL struct {
	*listener
	cfg MySQLConfig
}

// Capability flags of the MySQL protocol.
const (
	clientMySQL            = 1 << 0 // CLIENT_LONG_PASSWORD; MariaDB: clear when extended capabilities follow
	clientConnectWithDB    = 1 << 3
	clientCompress         = 1 << 5
	clientProtocol41       = 1 << 9
	clientSSL              = 1 << 11
	clientSecureConn       = 1 << 15
	clientPluginAuth       = 1 << 19
	clientConnectAttrs     = 1 << 20
	clientPluginAuthLenenc = 1 << 21
	clientZstdCompression  = 1 << 26
	clientSSLVerifyServer  = 1 << 30
)

// Auth plugins the broker logs in with.
const (
	nativePassword  = "mysql_native_password"
	cachingSHA2     = "caching_sha2_password"
	mysqlPacketMax  = 1<<24 - 1
	clientHelloMax  = 16 << 10 // a client's packets before it is logged in
	backendHelloMax = 64 << 10 // the database's packets before login
)

// NewMySQL returns a listener's handler for cfg.
func NewMySQL(cfg MySQLConfig) (*MySQL, error) {
	var err error
	if cfg.BackendTLS, err = (backendConfig{"mysql", cfg.Backend, cfg.TLSMode, cfg.BackendTLS, cfg.Credentials}).check(); err != nil {
		return nil, err
	}
	defaults(&cfg.Log, &cfg.ConnectTimeout, &cfg.Name, "mysql")
	return &MySQL{listener: newListener(cfg.Name, cfg.OnSessionsEnded), cfg: cfg}, nil
}

// Serve accepts connections on ln until ctx ends, then closes ln and the
// sessions in flight.
func (s *MySQL) Serve(ctx context.Context, ln net.Listener) error {
	return s.accept(ctx, ln, s.serve)
}

// mysqlError is an ERR packet.
type mysqlError struct {
	Code    uint16
	State   string
	Message string
}

func (e *mysqlError) Error() string {
	return fmt.Sprintf("error %d (%s): %s", e.Code, e.State, e.Message)
}

// serve runs one client connection: the database's greeting, the
// client's handshake, the login to the database, then the relay.
func (s *MySQL) serve(ctx context.Context, client net.Conn) {
	m := s.cfg.Metrics
	m.opened(s.cfg.Name)
	began := time.Now()
	defer func() { m.closed(s.cfg.Name, time.Since(began)) }()

	deadline := time.Now().Add(s.cfg.ConnectTimeout)
	client.SetDeadline(deadline)
	cred, err := s.cfg.Credentials.Current(ctx)
	if err != nil {
		m.authFailed(s.cfg.Name)
		writeMySQLError(client, 0, &mysqlError{Code: 1045, State: "28000",
			Message: fmt.Sprintf("graft broker: no database credential to log in with: %v; graft-agent serves it from the application's tree: check that the credential's paths exist there (graft ls) and that graft-agent follows the tree", err)})
		return
	}
	fail := func(seq byte, err error) {
		m.authFailed(s.cfg.Name)
		var me *mysqlError
		if errors.As(err, &me) {
			me = &mysqlError{Code: me.Code, State: me.State, Message: redact(fmt.Sprintf(
				"graft broker logged in as user %q with the credential from %s (revision %d) and the database refused it: %s; check it is the database's current one",
				cred.User, cred.Source, cred.Revision, me.Message), cred.Password)}
		} else {
			me = &mysqlError{Code: 2013, State: "HY000", Message: redact(fmt.Sprintf(
				"graft broker cannot log in to the database at %s as user %q (credential from %s, revision %d): %v; check the broker's backend address and TLS settings in graft-agent's configuration",
				s.cfg.Backend, cred.User, cred.Source, cred.Revision, err), cred.Password)}
		}
		s.cfg.Log.Warn("broker: login to the database failed", "listener", s.cfg.Name, "user", cred.User, "source", cred.Source, "revision", cred.Revision,
			"err", redact(err.Error(), cred.Password))
		writeMySQLError(client, seq, me)
	}

	var d net.Dialer
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	raw, err := d.DialContext(dctx, "tcp", s.cfg.Backend)
	if err != nil {
		fail(0, err)
		return
	}
	defer raw.Close()
	raw.SetDeadline(deadline)
	_, gp, err := readPacket(raw, backendHelloMax)
	if err != nil {
		fail(0, fmt.Errorf("read the database's greeting: %w", err))
		return
	}
	greet, err := parseGreeting(gp)
	if err != nil {
		var me *mysqlError
		if errors.As(err, &me) {
			err = fmt.Errorf("the database refused the connection before the login: %s", me.Message)
		}
		fail(0, err)
		return
	}

	// The client's handshake, with the broker's own scramble: what the
	// client answers it with is never checked, nor sent on.
	offered := greet.caps &^ (clientSSL | clientCompress | clientZstdCompression)
	if s.cfg.ClientTLS != nil {
		offered |= clientSSL
	}
	if err := writePacket(client, 0, s.greeting(greet, offered)); err != nil {
		return
	}
	seq, hello, err := readPacket(client, clientHelloMax)
	if err != nil || seq != 1 {
		s.cfg.Log.Debug("broker: a client left before its handshake response", "listener", s.cfg.Name, "err", err)
		return
	}
	if len(hello) == 32 && binary.LittleEndian.Uint32(hello)&clientSSL != 0 {
		if s.cfg.ClientTLS == nil {
			return // not offered
		}
		tc := tls.Server(client, s.cfg.ClientTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			s.cfg.Log.Warn("broker: TLS handshake with a client failed", "listener", s.cfg.Name, "err", err)
			return
		}
		client = tc
		if seq, hello, err = readPacket(client, clientHelloMax); err != nil || seq != 2 {
			return
		}
	}
	resp, err := parseHandshakeResponse(hello)
	if err != nil {
		s.cfg.Log.Debug("broker: a client's handshake response is malformed", "listener", s.cfg.Name, "err", err)
		return
	}
	if resp.caps&clientProtocol41 == 0 {
		writeMySQLError(client, seq+1, &mysqlError{Code: 1251, State: "08004", Message: "graft broker: the client must speak protocol 4.1"})
		return
	}

	backend, ok, err := s.login(ctx, raw, greet, resp, cred)
	if err != nil {
		fail(seq+1, err)
		return
	}
	s.cfg.Metrics.connected(s.cfg.Name, time.Since(began))
	if err := writePacket(client, seq+1, ok); err != nil {
		return
	}
	client.SetDeadline(time.Time{})
	backend.SetDeadline(time.Time{})
	s.cfg.Log.Debug("broker: session open", "listener", s.cfg.Name, "user", cred.User, "revision", cred.Revision)
	s.session(cred.User, 1)
	defer s.session(cred.User, -1)
	relay(client, backend, client, m, s.cfg.Name, nil)
}

// greeting is a HandshakeV10 packet.
type greeting struct {
	version  string
	connID   uint32
	caps     uint32
	charset  byte
	status   uint16
	extCaps  uint32 // MariaDB's, when caps lacks clientMySQL
	scramble []byte
	plugin   string
}

// parseGreeting reads the database's HandshakeV10, or its ERR packet.
func parseGreeting(p []byte) (*greeting, error) {
	if len(p) > 0 && p[0] == 0xff {
		return nil, parseErr(p)
	}
	if len(p) == 0 || p[0] != 10 {
		return nil, errors.New("the database's greeting is not protocol 10: is it MySQL or MariaDB?")
	}
	r := reader{b: p[1:]}
	g := &greeting{version: r.nulString(), connID: r.uint32()}
	part1 := r.take(8)
	r.take(1)
	g.caps = uint32(r.uint16())
	g.charset = r.byte()
	g.status = r.uint16()
	g.caps |= uint32(r.uint16()) << 16
	authLen := int(r.byte())
	r.take(6)
	g.extCaps = r.uint32()
	if r.err != nil {
		return nil, errors.New("the database's greeting is truncated")
	}
	if g.caps&clientMySQL != 0 {
		g.extCaps = 0
	}
	need := clientProtocol41 | clientSecureConn | clientPluginAuth
	if g.caps&uint32(need) != uint32(need) {
		return nil, fmt.Errorf("the database (%s) lacks protocol 4.1 with pluggable authentication", g.version)
	}
	part2 := r.take(max(13, authLen-8))
	g.plugin = r.nulString()
	if r.err != nil {
		return nil, errors.New("the database's greeting is truncated")
	}
	g.scramble = append(append([]byte{}, part1...), bytes.TrimRight(part2, "\x00")...)
	return g, nil
}

// greeting is the broker's HandshakeV10 to a client: the database's
// version, connection id (KILL QUERY from another session works), status
// and character set, the capabilities caps, and a scramble of its own.
func (s *MySQL) greeting(g *greeting, caps uint32) []byte {
	scramble := make([]byte, 20)
	rand.Read(scramble)
	for i := range scramble {
		scramble[i] = scramble[i]&0x7f | 1 // no NUL: clients read part 2 up to one
	}
	b := []byte{10}
	b = append(append(b, g.version...), 0)
	b = binary.LittleEndian.AppendUint32(b, g.connID)
	b = append(append(b, scramble[:8]...), 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(caps))
	b = append(b, g.charset)
	b = binary.LittleEndian.AppendUint16(b, g.status)
	b = binary.LittleEndian.AppendUint16(b, uint16(caps>>16))
	b = append(b, 21, 0, 0, 0, 0, 0, 0)
	ext := g.extCaps
	if caps&clientMySQL != 0 {
		ext = 0
	}
	b = binary.LittleEndian.AppendUint32(b, ext)
	b = append(append(b, scramble[8:]...), 0)
	return append(append(b, nativePassword...), 0)
}

// handshakeResponse is what the broker keeps of a client's
// HandshakeResponse41: not its user nor its auth response.
type handshakeResponse struct {
	caps       uint32
	maxPacket  uint32
	charset    byte
	extCaps    uint32
	database   string
	hasDB      bool
	attributes []byte // length-encoded, as sent
}

func parseHandshakeResponse(p []byte) (*handshakeResponse, error) {
	r := reader{b: p}
	h := &handshakeResponse{caps: r.uint32(), maxPacket: r.uint32(), charset: r.byte()}
	r.take(19)
	h.extCaps = r.uint32()
	if h.caps&clientMySQL != 0 {
		h.extCaps = 0
	}
	r.nulString() // user
	switch {
	case h.caps&clientPluginAuthLenenc != 0:
		r.take(int(r.lenenc()))
	case h.caps&clientSecureConn != 0:
		r.take(int(r.byte()))
	default:
		r.nulString()
	}
	if r.err != nil {
		return nil, errors.New("truncated before the auth response's end")
	}
	if h.caps&clientConnectWithDB != 0 && len(r.b) > 0 {
		h.database, h.hasDB = r.nulString(), true
	}
	if h.caps&clientPluginAuth != 0 && len(r.b) > 0 {
		r.nulString()
	}
	if h.caps&clientConnectAttrs != 0 && len(r.b) > 0 {
		start := r.b
		n := r.lenenc()
		r.take(int(n))
		if r.err == nil {
			h.attributes = start[:len(start)-len(r.b)]
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return h, nil
}

// login finishes the database's handshake with the client's
// capabilities, character set, database and attributes and the
// credential, over TLS when configured. It returns the connection (TLS
// or not) and the database's OK packet.
func (s *MySQL) login(ctx context.Context, conn net.Conn, g *greeting, c *handshakeResponse, cred Credential) (net.Conn, []byte, error) {
	caps := c.caps & g.caps &^ (clientSSL | clientCompress | clientZstdCompression | clientConnectWithDB | clientConnectAttrs | clientPluginAuthLenenc | clientSSLVerifyServer)
	caps |= clientProtocol41 | clientSecureConn | clientPluginAuth
	if c.hasDB && c.database != "" {
		caps |= clientConnectWithDB
	}
	if c.attributes != nil && g.caps&clientConnectAttrs != 0 {
		caps |= clientConnectAttrs
	}
	if g.caps&clientPluginAuthLenenc != 0 {
		caps |= clientPluginAuthLenenc
	}
	ext := c.extCaps & g.extCaps
	if caps&clientMySQL != 0 {
		ext = 0
	}
	header := func(caps uint32) []byte {
		b := binary.LittleEndian.AppendUint32(nil, caps)
		b = binary.LittleEndian.AppendUint32(b, c.maxPacket)
		b = append(b, c.charset)
		b = append(b, make([]byte, 19)...)
		return binary.LittleEndian.AppendUint32(b, ext)
	}
	seq := byte(1)
	tlsOn := false
	if s.cfg.BackendTLS != nil {
		if g.caps&clientSSL == 0 {
			return nil, nil, fmt.Errorf("the database offers no TLS and the broker's backend TLS mode is %s", s.cfg.TLSMode)
		}
		caps |= clientSSL
		if err := writePacket(conn, seq, header(caps)); err != nil {
			return nil, nil, err
		}
		seq++
		tc := tls.Client(conn, s.cfg.BackendTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, nil, fmt.Errorf("TLS with the database: %w", err)
		}
		conn, tlsOn = tc, true
	}

	plugin, scramble := g.plugin, g.scramble
	if plugin != nativePassword && plugin != cachingSHA2 {
		// The database switches to the user's plugin if need be.
		plugin = nativePassword
	}
	auth, _ := scramblePassword(plugin, scramble, cred.Password)
	b := append(header(caps), cred.User...)
	b = append(b, 0)
	if caps&clientPluginAuthLenenc != 0 {
		b = appendLenenc(b, uint64(len(auth)))
	} else {
		b = append(b, byte(len(auth)))
	}
	b = append(b, auth...)
	if caps&clientConnectWithDB != 0 {
		b = append(append(b, c.database...), 0)
	}
	b = append(append(b, plugin...), 0)
	if caps&clientConnectAttrs != 0 {
		b = append(b, c.attributes...)
	}
	if err := writePacket(conn, seq, b); err != nil {
		return nil, nil, err
	}
	for {
		rs, p, err := readPacket(conn, backendHelloMax)
		if err != nil {
			return nil, nil, fmt.Errorf("read the database's answer to the login: %w", err)
		}
		seq = rs + 1
		if len(p) == 0 {
			return nil, nil, errors.New("the database answered the login with an empty packet")
		}
		var reply []byte
		switch p[0] {
		case 0x00:
			return conn, p, nil
		case 0xff:
			return nil, nil, parseErr(p)
		case 0xfe: // AuthSwitchRequest
			r := reader{b: p[1:]}
			plugin = r.nulString()
			if r.err != nil || plugin == "" {
				return nil, nil, errors.New("the database asks for the pre-4.1 password authentication, which the broker does not speak")
			}
			scramble = bytes.TrimRight(r.b, "\x00")
			if reply, err = scramblePassword(plugin, scramble, cred.Password); err != nil {
				return nil, nil, err
			}
		case 0x01: // AuthMoreData
			if plugin != cachingSHA2 || len(p) < 2 {
				return nil, nil, fmt.Errorf("the database sent %s more authentication data the broker does not understand", plugin)
			}
			switch p[1] {
			case 3: // fast authentication succeeded: OK follows
				continue
			case 4: // perform full authentication: the password itself
				if !tlsOn {
					return nil, nil, fmt.Errorf("the database asks user %q for caching_sha2_password's full authentication, which sends the password: the broker sends it only over TLS; set the backend's tls mode to require, verify-ca or verify-full", cred.User)
				}
				reply = append([]byte(cred.Password), 0)
			default:
				return nil, nil, fmt.Errorf("the database sent caching_sha2_password data %#x the broker does not understand", p[1])
			}
		default:
			return nil, nil, fmt.Errorf("the database answered the login with a packet of type %#x", p[0])
		}
		if err := writePacket(conn, seq, reply); err != nil {
			return nil, nil, err
		}
	}
}

// scramblePassword is the auth response of plugin to scramble.
func scramblePassword(plugin string, scramble []byte, password string) ([]byte, error) {
	if password == "" {
		return []byte{}, nil
	}
	switch plugin {
	case nativePassword:
		// SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))
		if len(scramble) > 20 {
			scramble = scramble[:20]
		}
		h1 := sha1.Sum([]byte(password))
		h2 := sha1.Sum(h1[:])
		h := sha1.New()
		h.Write(scramble)
		h.Write(h2[:])
		out := h.Sum(nil)
		for i := range out {
			out[i] ^= h1[i]
		}
		return out, nil
	case cachingSHA2:
		// SHA256(password) XOR SHA256(SHA256(SHA256(password)) + scramble)
		h1 := sha256.Sum256([]byte(password))
		h2 := sha256.Sum256(h1[:])
		h := sha256.New()
		h.Write(h2[:])
		h.Write(scramble)
		out := h.Sum(nil)
		for i := range out {
			out[i] ^= h1[i]
		}
		return out, nil
	}
	return nil, fmt.Errorf("the database asks for the auth plugin %s; the broker speaks mysql_native_password and caching_sha2_password: create the user with one of them", plugin)
}

func parseErr(p []byte) *mysqlError {
	r := reader{b: p[1:]}
	e := &mysqlError{Code: r.uint16(), State: "HY000"}
	if len(r.b) > 0 && r.b[0] == '#' && len(r.b) >= 6 {
		e.State = string(r.b[1:6])
		r.b = r.b[6:]
	}
	e.Message = string(r.b)
	return e
}

// writeMySQLError sends an ERR packet (protocol 4.1).
func writeMySQLError(w io.Writer, seq byte, e *mysqlError) error {
	b := []byte{0xff}
	b = binary.LittleEndian.AppendUint16(b, e.Code)
	b = append(append(b, '#'), e.State...)
	b = append(b, e.Message...)
	return writePacket(w, seq, b)
}

// readPacket reads one packet of at most limit bytes.
func readPacket(r io.Reader, limit int) (byte, []byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[0]) | int(h[1])<<8 | int(h[2])<<16
	if n > limit {
		return 0, nil, fmt.Errorf("a packet of %d bytes, over the %d allowed before login", n, limit)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return h[3], p, nil
}

func writePacket(w io.Writer, seq byte, p []byte) error {
	if len(p) >= mysqlPacketMax {
		return errors.New("packet too large")
	}
	b := make([]byte, 4, 4+len(p))
	b[0], b[1], b[2], b[3] = byte(len(p)), byte(len(p)>>8), byte(len(p)>>16), seq
	_, err := w.Write(append(b, p...))
	return err
}

func appendLenenc(b []byte, n uint64) []byte {
	switch {
	case n < 251:
		return append(b, byte(n))
	case n < 1<<16:
		return binary.LittleEndian.AppendUint16(append(b, 0xfc), uint16(n))
	case n < 1<<24:
		return append(b, 0xfd, byte(n), byte(n>>8), byte(n>>16))
	}
	return binary.LittleEndian.AppendUint64(append(b, 0xfe), n)
}

// reader reads a packet's fields; past the end it sets err and returns
// zeros.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b) {
		r.err = io.ErrUnexpectedEOF
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) uint16() uint16 {
	if b := r.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *reader) uint32() uint32 {
	if b := r.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *reader) nulString() string {
	i := bytes.IndexByte(r.b, 0)
	if r.err != nil || i < 0 {
		r.err = io.ErrUnexpectedEOF
		return ""
	}
	s := string(r.b[:i])
	r.b = r.b[i+1:]
	return s
}

func (r *reader) lenenc() uint64 {
	switch c := r.byte(); {
	case c < 0xfb:
		return uint64(c)
	case c == 0xfc:
		return uint64(r.uint16())
	case c == 0xfd:
		b := r.take(3)
		if b == nil {
			return 0
		}
		return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16
	case c == 0xfe:
		if b := r.take(8); b != nil {
			return binary.LittleEndian.Uint64(b)
		}
		return 0
	}
	r.err = errors.New("a length-encoded integer starting with 0xfb or 0xff")
	return 0
}
