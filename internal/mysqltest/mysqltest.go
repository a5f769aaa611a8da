// Package mysqltest runs a real MariaDB server for a test, started from
// Debian's packages (mariadb-install-db, mariadbd) in a temporary directory
// on a loopback port, and stopped when the test ends.
package mysqltest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/graft-sh/graft/internal/dbproc"
)

// Server is a running MariaDB.
type Server struct {
	// Host and Port are the TCP address (Host is always 127.0.0.1).
	Host string
	Port int
	// RootUser logs in with RootPassword over TCP (mysql_native_password).
	RootUser, RootPassword string
	// DSN is the root user's go-sql-driver/mysql DSN, no database
	// selected (user:password@tcp(127.0.0.1:port)/, with ?tls=… under
	// RequireTLS).
	DSN string
	// TLSConfigName is the name the server's client TLS configuration
	// is registered under with mysql.RegisterTLSConfig (DSN parameter
	// tls=<name>); empty unless RequireTLS.
	TLSConfigName string
	// Dir holds the data directory (data), the unix socket (mysqld.sock),
	// the server's log (mariadb.log) and the general query log's file
	// (general.log, written once general_log is switched on); it is
	// removed when the test ends.
	Dir string
	// Socket is the unix socket; root logs in there by unix_socket
	// authentication (mariadb -S <Socket> as the OS user root), or with
	// RootPassword.
	Socket string
	// InstallTime is how long mariadb-install-db took for this start: it
	// runs once per test process, so later starts wait 0.
	InstallTime time.Duration
	// StartTime is how long the start took, from the call until the
	// first accepted connection, InstallTime included.
	StartTime time.Duration
}

// Option changes how Start runs the server.
type Option func(*options)

type options struct{ requireTLS bool }

// RequireTLS makes the server accept TCP connections only over TLS
// (require_secure_transport), with a certificate for 127.0.0.1 from a
// CA made for this server; the DSN names a registered client TLS
// configuration that trusts that CA.
func RequireTLS() Option { return func(o *options) { o.requireTLS = true } }

// Start runs a MariaDB server until the test ends. It skips the test when
// the programs are missing, or fails it instead when GRAFT_REQUIRE_MYSQL=1.
// As root, the server runs as the mysql system user, since mariadbd
// refuses to run as root.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	progs, cred, err := prerequisites()
	if err != nil {
		unavailable(t, err.Error())
	}
	removeStale()

	began := time.Now()
	tmpl, installTime, err := template(progs, cred)
	if err != nil {
		t.Fatalf("mysqltest: %v", err)
	}
	dir, err := newDir(cred)
	if err != nil {
		t.Fatalf("mysqltest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{
		Host: "127.0.0.1", RootUser: "root", RootPassword: dbproc.RandomHex(16),
		Dir: dir, Socket: filepath.Join(dir, socketFile), InstallTime: installTime,
	}
	if err := copyTree(filepath.Join(tmpl, "data"), filepath.Join(dir, "data"), cred); err != nil {
		t.Fatalf("mysqltest: copy the initialised data directory: %v", err)
	}
	var tlsConfig *tls.Config
	if o.requireTLS {
		if tlsConfig, err = s.makeCertificates(cred); err != nil {
			t.Fatalf("mysqltest: %v", err)
		}
		s.TLSConfigName = filepath.Base(dir)
		if err := mysql.RegisterTLSConfig(s.TLSConfigName, tlsConfig); err != nil {
			t.Fatalf("mysqltest: %v", err)
		}
		t.Cleanup(func() { mysql.DeregisterTLSConfig(s.TLSConfigName) })
	}
	if err := s.writeInitFile(cred); err != nil {
		t.Fatalf("mysqltest: %v", err)
	}
	var p *dbproc.Process
	for attempt := 1; ; attempt++ {
		s.Port = dbproc.FreePort(t)
		p, err = s.start(progs, cred, o)
		if err == nil {
			break
		}
		// Another process may take the free port before mariadbd binds it.
		if !errors.Is(err, dbproc.ErrPortTaken) || attempt == 3 {
			t.Fatalf("mysqltest: %v\n%s", err, dbproc.Tail(s.Log(), logTail))
		}
	}
	// The init file has done its work; the server reads it only at start.
	os.Remove(filepath.Join(dir, initFile))
	s.DSN = s.Config(s.RootUser, s.RootPassword, "").FormatDSN()
	t.Cleanup(func() {
		p.Stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("mysqltest: the server's log, its last %d lines:\n%s", logTail, dbproc.Tail(s.Log(), logTail))
		}
	})
	s.StartTime = time.Since(began)
	return s
}

const (
	// baseDir is where the servers' directories go: /tmp rather than
	// $TMPDIR, which may be private to the test's user and so out of the
	// server's reach.
	baseDir        = "/tmp"
	dirPrefix      = "graft-mysqltest-"
	ownerFile      = "owner.pid"
	logFile        = "mariadb.log"
	generalLogFile = "general.log"
	socketFile     = "mysqld.sock"
	pidFile        = "mysqld.pid"
	initFile       = "init.sql"
)

// unavailable skips the test, or fails it when the environment promises
// MariaDB (CI).
func unavailable(t testing.TB, reason string) {
	t.Helper()
	dbproc.Unavailable(t, "mysqltest", "GRAFT_REQUIRE_MYSQL", reason)
}

// programs are the paths of the server and of its initialisation script.
type programs struct{ server, installDB string }

// BinDirEnv names the one directory to find both programs in, instead of
// Debian's /usr/sbin and /usr/bin and then $PATH: a MariaDB installed
// elsewhere, or none at all (a directory without them) to see the tests
// skip on a machine that has one.
const BinDirEnv = "GRAFT_MYSQL_BINDIR"

// prerequisites finds the server's programs and the user to run them as.
func prerequisites() (programs, *syscall.Credential, error) {
	var p programs
	var err error
	if p.server, err = find("/usr/sbin", "mariadbd", "mysqld"); err != nil {
		return p, nil, err
	}
	if p.installDB, err = find("/usr/bin", "mariadb-install-db", "mysql_install_db"); err != nil {
		return p, nil, err
	}
	cred, err := runAs()
	return p, cred, err
}

// find is the first of names in dir, else on $PATH; only in $BinDirEnv
// when that is set.
func find(dir string, names ...string) (string, error) {
	only := os.Getenv(BinDirEnv)
	if only != "" {
		dir = only
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name), nil
		}
	}
	if only != "" {
		return "", fmt.Errorf("MariaDB's %s is not in %s (%s)", strings.Join(names, " or "), dir, BinDirEnv)
	}
	for _, name := range names {
		if path, err := exec.LookPath(name); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("MariaDB's %s is not in %s or on PATH (apt-get install mariadb-server, or set %s)", strings.Join(names, " or "), dir, BinDirEnv)
}

// runAs is the identity the server runs as: the mysql system user's when
// this process is root.
func runAs() (*syscall.Credential, error) {
	return dbproc.RunAs("mysql", "the mariadb-server package creates it")
}

// command runs prog as cred in dir. It must not change user itself
// (--user): the kernel's kill on this process's death (dbproc.Command)
// would be lost.
func command(prog, dir string, cred *syscall.Credential, args ...string) *exec.Cmd {
	cmd := dbproc.Command(prog, cred, syscall.SIGKILL, args...)
	cmd.Env = append(cmd.Env, "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.Dir = dir
	return cmd
}

// tuning makes the server fast and small for tests: nothing is durable,
// no binary log, no DNS. The same InnoDB settings serve the install and
// every start of its copies.
var tuning = []string{
	"--skip-log-bin",
	"--skip-name-resolve",
	"--innodb-buffer-pool-size=32M",
	"--innodb-log-file-size=4M",
	"--innodb-flush-log-at-trx-commit=0",
	"--innodb-doublewrite=0",
	"--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
	"--character-set-server=utf8mb4",
}

// installed is the process's initialised data directory: the install
// takes about 1.4 s, a copy of its 22 MB about 40 ms, so it runs once per
// test process and every Start copies it.
var installed struct {
	sync.Mutex
	dir string
	err error
}

// template returns the directory whose data subdirectory is an
// initialised data directory, installing it on first use, and how long
// this call waited for the install.
func template(progs programs, cred *syscall.Credential) (string, time.Duration, error) {
	installed.Lock()
	defer installed.Unlock()
	if installed.dir != "" || installed.err != nil {
		return installed.dir, 0, installed.err
	}
	began := time.Now()
	installed.dir, installed.err = install(progs, cred)
	return installed.dir, time.Since(began), installed.err
}

// install runs mariadb-install-db: system tables, root@localhost by
// unix_socket authentication, no test database.
func install(progs programs, cred *syscall.Credential) (string, error) {
	dir, err := newDir(cred)
	if err != nil {
		return "", err
	}
	args := append([]string{"--no-defaults", // must come first
		"--datadir=" + filepath.Join(dir, "data"),
		"--auth-root-authentication-method=socket", "--skip-test-db",
	}, tuning...)
	if out, err := command(progs.installDB, dir, cred, args...).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("%s: %w\n%s", filepath.Base(progs.installDB), err, dbproc.Tail(string(out), logTail))
	}
	return dir, nil
}

// newDir makes a directory under baseDir for a server (or the template)
// owned by its user. The owner file lets a later Start remove it if this
// process dies before its cleanup runs.
func newDir(cred *syscall.Credential) (string, error) {
	dir, err := os.MkdirTemp(baseDir, dirPrefix)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := dbproc.Chown(cred, dir); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// copyTree copies the directories and regular files below src to dst,
// owned by cred.
func copyTree(src, dst string, cred *syscall.Credential) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			err = os.Mkdir(target, info.Mode().Perm())
		case d.Type().IsRegular():
			err = copyFile(path, target, info.Mode().Perm())
		default:
			err = fmt.Errorf("%s is neither a file nor a directory", path)
		}
		if err != nil {
			return err
		}
		return dbproc.Chown(cred, target)
	})
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// writeInitFile writes the SQL the server runs at start, before it
// accepts connections: root over TCP from 127.0.0.1 by password, and
// the same password on the unix socket for an OS user other than root.
// The file holds the password's hash, never the password.
func (s *Server) writeInitFile(cred *syscall.Credential) error {
	hash := Literal(NativeHash(s.RootPassword))
	sql := strings.Join([]string{
		"CREATE USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING " + hash,
		"GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
		"ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING " + hash,
	}, ";\n") + ";\n"
	name := filepath.Join(s.Dir, initFile)
	if err := os.WriteFile(name, []byte(sql), 0o600); err != nil {
		return err
	}
	return dbproc.Chown(cred, name)
}

// makeCertificates writes a CA and a certificate for 127.0.0.1 signed by
// it into Dir, and returns the client configuration that trusts the CA.
func (s *Server) makeCertificates(cred *syscall.Credential) (*tls.Config, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mysqltest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"ca.pem":         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		"server.pem":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		"server-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	for name, data := range files {
		path := filepath.Join(s.Dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
		if err := dbproc.Chown(cred, path); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// start runs mariadbd on s.Port and waits until root can log in over TCP.
func (s *Server) start(progs programs, cred *syscall.Credential, o options) (*dbproc.Process, error) {
	args := append([]string{"--no-defaults", // must come first
		"--datadir=" + filepath.Join(s.Dir, "data"),
		"--bind-address=127.0.0.1", "--port=" + strconv.Itoa(s.Port),
		"--socket=" + s.Socket,
		"--pid-file=" + filepath.Join(s.Dir, pidFile),
		"--tmpdir=" + s.Dir,
		"--log-error=" + filepath.Join(s.Dir, logFile),
		"--general-log-file=" + filepath.Join(s.Dir, generalLogFile),
		"--init-file=" + filepath.Join(s.Dir, initFile),
	}, tuning...)
	if o.requireTLS {
		args = append(args,
			"--ssl-ca="+filepath.Join(s.Dir, "ca.pem"),
			"--ssl-cert="+filepath.Join(s.Dir, "server.pem"),
			"--ssl-key="+filepath.Join(s.Dir, "server-key.pem"),
			"--require-secure-transport=ON")
	}
	cmd := command(progs.server, s.Dir, cred, args...)
	// mariadbd writes to --log-error; anything before that goes here.
	out, err := os.OpenFile(filepath.Join(s.Dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the server holds its own descriptor
	if err := dbproc.Chown(cred, out.Name()); err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = out, out
	name := filepath.Base(progs.server)
	p, err := dbproc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cfg := s.Config(s.RootUser, s.RootPassword, "")
	cfg.Timeout = time.Second
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		p.Stop(syscall.SIGTERM)
		return nil, err
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	ready := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return db.PingContext(ctx)
	}
	portTaken := func() bool {
		log := s.Log()
		return strings.Contains(log, "Address already in use") || strings.Contains(log, "errno: 98")
	}
	if err := p.AwaitReady(name, ready, portTaken, syscall.SIGTERM); err != nil {
		return nil, err
	}
	return p, nil
}

// Pid is the server's process id.
func (s *Server) Pid() int {
	data, _ := os.ReadFile(filepath.Join(s.Dir, pidFile))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// Log is the server's error log so far.
func (s *Server) Log() string {
	data, _ := os.ReadFile(filepath.Join(s.Dir, logFile))
	return string(data)
}

// GeneralLog is the general query log so far: every statement the
// server received while general_log was on (SET GLOBAL general_log=1).
func (s *Server) GeneralLog() string {
	data, _ := os.ReadFile(filepath.Join(s.Dir, generalLogFile))
	return string(data)
}

// logTail is how much of the server's log a failed test shows.
const logTail = 60

// Config is a connection configuration for user on database ("" for
// none) over TCP, with the server's TLS configuration under RequireTLS.
func (s *Server) Config(user, password, database string) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd = user, password
	cfg.Net, cfg.Addr = "tcp", net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	cfg.DBName = database
	cfg.TLSConfig = s.TLSConfigName
	return cfg
}

// ConnectAs opens a connection pool as user on database ("" for none),
// closed when the test ends. It connects lazily; use Conn or Ping to see
// a login fail.
func (s *Server) ConnectAs(t testing.TB, user, password, database string) *sql.DB {
	t.Helper()
	connector, err := mysql.NewConnector(s.Config(user, password, database))
	if err != nil {
		t.Fatalf("mysqltest: %v", err)
	}
	db := sql.OpenDB(connector)
	t.Cleanup(func() { db.Close() })
	return db
}

// Connect connects as root until the test ends.
func (s *Server) Connect(t testing.TB) *sql.DB {
	t.Helper()
	db := s.ConnectAs(t, s.RootUser, s.RootPassword, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("mysqltest: connect as %s: %v", s.RootUser, err)
	}
	return db
}

// Exec runs sql as root, failing the test on error.
func (s *Server) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	db := s.Connect(t)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, sql, args...); err != nil {
		t.Fatalf("mysqltest: %s: %v", sql, err)
	}
}

// CreateDatabase creates database name.
func (s *Server) CreateDatabase(t testing.TB, name string) {
	t.Helper()
	s.Exec(t, "CREATE DATABASE "+Ident(name))
}

// CreateUser creates name@'%', which logs in with password, granted the
// roles in roles with the first as its default role (active at login).
func (s *Server) CreateUser(t testing.TB, name, password string, roles ...string) {
	t.Helper()
	account := Literal(name) + "@'%'"
	s.Exec(t, "CREATE USER "+account+" IDENTIFIED BY "+Literal(password))
	for _, r := range roles {
		s.Exec(t, "GRANT "+Ident(r)+" TO "+account)
	}
	if len(roles) > 0 {
		s.Exec(t, "SET DEFAULT ROLE "+Ident(roles[0])+" FOR "+account)
	}
}

// Ident quotes an SQL identifier (a database, table or role name).
func Ident(name string) string { return "`" + strings.ReplaceAll(name, "`", "``") + "`" }

// Literal quotes an SQL string literal, for statements that take no
// parameters (CREATE USER … IDENTIFIED BY); the server runs with its
// default sql_mode, where a backslash escapes.
func Literal(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}

// NativeHash is password's mysql_native_password hash as MariaDB stores
// it: "*" and the upper-case hex of SHA1(SHA1(password)).
func NativeHash(password string) string {
	first := sha1.Sum([]byte(password))
	second := sha1.Sum(first[:])
	return "*" + strings.ToUpper(hex.EncodeToString(second[:]))
}

// removeStale removes the directories of servers (and templates) whose
// test process died before its cleanup (a timeout's panic, a SIGKILL).
// Pdeathsig has normally stopped their servers; one still running (its
// parent thread outlived, or it was started otherwise) is killed first,
// once its command line shows it serves that directory.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(baseDir, dirPrefix+"*"))
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(string(data))
		if err != nil || pid == os.Getpid() || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue
		}
		if killServer(dir) {
			os.RemoveAll(dir)
		}
	}
}

// killServer kills the server that serves dir, if one runs, and says
// whether none runs now.
func killServer(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return true
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return true
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || !strings.Contains(string(cmdline), "--datadir="+filepath.Join(dir, "data")) {
		return true // gone, or the pid is another process's now
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for range 100 {
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
