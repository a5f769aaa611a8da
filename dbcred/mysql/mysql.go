// Package mysql is dbcred's Driver for MariaDB, through go-sql-driver/mysql.
//
// The group is a role. Each user is the account 'name'@'%', granted the
// group as its default role, so the role is active from login and both
// users of a pair act with exactly the role's privileges (roles with SET
// DEFAULT ROLE, not copied grants: a grant made to the group later reaches
// both users at once, and the two can never drift apart). MariaDB has no
// owners of tables, so what either user creates the other may use as far
// as the role's grants reach.
//
// A password reaches the server only as its mysql_native_password hash
// (IDENTIFIED VIA mysql_native_password USING '*…'): MariaDB writes
// CREATE USER and ALTER USER into its general, slow and binary logs as
// sent, plaintext included.
//
// MySQL, whose statements differ (SET DEFAULT ROLE … TO, roles with a
// host, caching_sha2_password), is refused at Open.
package mysql

import (
	"context"
	"crypto/sha1"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/graft-sh/graft/dbcred"
)

var _ dbcred.Driver = (*Driver)(nil)

// errUnescaped refuses a DSN whose database name holds an @. In
// go-sql-driver/mysql's form the user info ends at the last @ before the
// last /, and it is taken as it is (nothing is percent-decoded), so a
// password may hold @ and / unescaped as long as the DSN has its / after
// the address. Without that /, a / in the password is taken for it: the
// password's start becomes the password, its rest the database name and
// the address, which the driver would connect to and quote.
var errUnescaped = errors.New("open mysql: the admin DSN's database name holds an @: a / in its user name or password was taken for the / before the database name, because the DSN has none after its address (the DSN was not used): write user:password@tcp(host:port)/ with that /; in this form a password's @ and / need no escaping, and percent-encoding is not decoded")

var (
	// ErrName says a user or group name is one the driver refuses.
	ErrName = errors.New("invalid name")
	// ErrUnsupported says the server is not a MariaDB the driver drives.
	ErrUnsupported = errors.New("unsupported server")
)

const (
	// testTimeout bounds a Test login and its query.
	testTimeout = 5 * time.Second
	// retireWait bounds how long Retire waits for killed sessions to end.
	retireWait = 5 * time.Second
	// maxName is MariaDB's limit on user names before 10.6 (128 since);
	// the lower one keeps a pair valid on every supported version.
	maxName = 80
)

// Driver manages users of one MariaDB server through an admin connection.
type Driver struct {
	db *sql.DB
	// cfg is the admin connection's configuration, which Test's logins
	// copy so they use its address and TLS settings.
	cfg *mysqldriver.Config
}

// Open connects to the server at adminDSN, a go-sql-driver/mysql DSN
// (admin:password@tcp(db:3306)/?tls=true). TLS is used when the DSN asks
// for it: tls=true verifies the server's certificate, skip-verify does
// not, and any other value names a configuration the program registered
// with mysql.RegisterTLSConfig. Test logs in the same way.
//
// The admin needs CREATE USER (roles and users), PROCESS (to see the
// users' sessions), CONNECTION ADMIN (to end them) and UPDATE on the
// mysql database (SET DEFAULT ROLE for another user); it is granted the
// roles it creates with ADMIN OPTION, which lets it grant them.
func Open(ctx context.Context, adminDSN string) (*Driver, error) {
	return OpenConns(ctx, adminDSN, defaultConns)
}

// defaultConns bounds Open's pool.
const defaultConns = 4

// OpenConns is Open with up to conns connections open at once (at least
// one), for statements run side by side, as dynamic credentials' are.
func OpenConns(ctx context.Context, adminDSN string, conns int) (*Driver, error) {
	cfg, err := mysqldriver.ParseDSN(adminDSN)
	if err != nil {
		// The parser's messages may quote the DSN, its password included.
		msg := "open mysql: the admin DSN does not parse: want user:password@tcp(host:port)/ and optionally ?tls=true, skip-verify or a registered TLS configuration's name"
		if strings.Contains(adminDSN, "://") {
			msg += " (a URL such as mysql://… is not this form)"
		}
		return nil, errors.New(msg)
	}
	if strings.Contains(cfg.DBName, "@") {
		return nil, errUnescaped
	}
	if cfg.User == "" {
		return nil, errors.New("open mysql: the admin DSN names no user: want user:password@tcp(host:port)/")
	}
	connector, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		return nil, dbcred.Redact(fmt.Errorf("open mysql: %w", err), cfg.Passwd)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(max(conns, 1))
	db.SetMaxIdleConns(max(conns, 1)) // database/sql keeps 2 otherwise, and would log in again for each third statement at once
	db.SetConnMaxIdleTime(time.Minute)
	d := &Driver{db: db, cfg: cfg}
	if err := d.checkServer(ctx); err != nil {
		db.Close()
		return nil, d.redact(err)
	}
	return d, nil
}

// checkServer refuses a server the driver's statements do not fit.
func (d *Driver) checkServer(ctx context.Context) error {
	var version string
	if err := d.db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return fmt.Errorf("open mysql at %s: %w", d.cfg.Addr, err)
	}
	if err := supported(version); err != nil {
		return fmt.Errorf("open mysql at %s: %w", d.cfg.Addr, err)
	}
	// Without PROCESS the admin sees no other user's sessions: Sessions
	// would say 0 and Retire would leave them open, both without an
	// error. The other privileges the admin lacks fail their statements.
	grants, err := d.grants(ctx)
	if err != nil {
		return fmt.Errorf("open mysql at %s: read the admin's grants: %w", d.cfg.Addr, err)
	}
	if !hasGlobal(grants, "PROCESS") {
		return fmt.Errorf("open mysql at %s: the admin %s lacks the PROCESS privilege, without which it cannot see the sessions Retire ends: GRANT PROCESS ON *.* TO it", d.cfg.Addr, d.cfg.User)
	}
	return nil
}

// grants are the admin's SHOW GRANTS lines, those of its roles included.
// They hold its password's hash: never put one in an error.
func (d *Driver) grants(ctx context.Context) ([]string, error) {
	rows, err := d.db.QueryContext(ctx, "SHOW GRANTS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var grants []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return nil, err
		}
		grants = append(grants, g)
	}
	return grants, rows.Err()
}

// hasGlobal says whether grants give privilege on *.*, by name or as
// ALL PRIVILEGES.
func hasGlobal(grants []string, privilege string) bool {
	for _, g := range grants {
		privs, ok := strings.CutPrefix(g, "GRANT ")
		if !ok {
			continue
		}
		privs, _, ok = strings.Cut(privs, " ON *.* TO ")
		if !ok {
			continue
		}
		for _, p := range strings.Split(privs, ", ") {
			if p == privilege || p == "ALL PRIVILEGES" {
				return true
			}
		}
	}
	return false
}

// supported says whether the server of version is one the driver
// drives: MariaDB 10.4 (ACCOUNT LOCK) or later, not MySQL.
func supported(version string) error {
	major, minor, ok := parseVersion(version)
	switch {
	case !strings.Contains(version, "MariaDB"):
		return fmt.Errorf("the server is %s, not MariaDB: %w: dbcred/mysql drives MariaDB 10.4 or later (MySQL's statements for roles and passwords differ)", version, ErrUnsupported)
	case !ok || major < 10 || major == 10 && minor < 4:
		return fmt.Errorf("the server is %s: %w: dbcred/mysql needs MariaDB 10.4 or later (ACCOUNT LOCK)", version, ErrUnsupported)
	}
	return nil
}

// parseVersion reads the major and minor numbers at the start of
// version ("10.11.19-MariaDB-0+deb12u1").
func parseVersion(version string) (major, minor int, ok bool) {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}

// EnsureGroup creates the role group if it does not exist. A role
// cannot log in.
func (d *Driver) EnsureGroup(ctx context.Context, group string) error {
	if err := checkGroup(group); err != nil {
		return fmt.Errorf("ensure group: %w", err)
	}
	if _, err := d.db.ExecContext(ctx, "CREATE ROLE IF NOT EXISTS "+role(group)); err != nil {
		return d.redact(fmt.Errorf("ensure group %s: %w", group, err))
	}
	return nil
}

// SetPassword creates the account user@'%' if it does not exist, grants
// it group as its default role, sets its password and unlocks it. The
// account is created locked and unlocked last, so it never logs in
// without the role, and a retired user comes back with the new password.
func (d *Driver) SetPassword(ctx context.Context, user, group, password string) error {
	if err := checkPair(user, group); err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	if password == "" {
		return fmt.Errorf("set password of %s: the password is empty", user)
	}
	hash := nativeHash(password)
	identified := " IDENTIFIED VIA mysql_native_password USING '" + hash + "'"
	steps := []string{
		"CREATE USER IF NOT EXISTS " + account(user) + identified + " ACCOUNT LOCK",
		"GRANT " + role(group) + " TO " + account(user),
		"SET DEFAULT ROLE " + role(group) + " FOR " + account(user),
		"ALTER USER " + account(user) + identified + " ACCOUNT UNLOCK",
	}
	for _, stmt := range steps {
		if _, err := d.db.ExecContext(ctx, stmt); err != nil {
			if serverError(err, errInvalidRole) {
				err = fmt.Errorf("group %s does not exist (EnsureGroup creates it): %w", group, err)
			}
			return d.redact(fmt.Errorf("set password of %s: %w", user, err), password, hash)
		}
	}
	return nil
}

// Test logs in as user with password on a connection of its own, at the
// admin connection's address and with its TLS settings, and checks that
// the session is the account user@'%' acting as role group. The login
// selects no database, and takes none of the admin DSN's session
// variables, which may need the admin's privileges.
func (d *Driver) Test(ctx context.Context, user, group, password string) error {
	if err := checkPair(user, group); err != nil {
		return fmt.Errorf("test login: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	cfg := d.cfg.Clone()
	cfg.User, cfg.Passwd = user, password
	cfg.DBName, cfg.Params = "", nil
	if cfg.Timeout == 0 || cfg.Timeout > testTimeout {
		cfg.Timeout = testTimeout
	}
	connector, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		return d.redact(fmt.Errorf("test login as %s: %w", user, err), password)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		var refused *mysqldriver.MySQLError
		if errors.As(err, &refused) {
			err = fmt.Errorf("%w: the server refused it: %w", dbcred.ErrLogin, err)
		}
		return d.redact(fmt.Errorf("test login as %s: %w", user, err), password)
	}
	defer conn.Close()
	var current string
	var active sql.NullString
	if err := conn.QueryRowContext(ctx, "SELECT CURRENT_USER(), CURRENT_ROLE()").Scan(&current, &active); err != nil {
		return d.redact(fmt.Errorf("test login as %s: %w", user, err), password)
	}
	switch {
	case current != user+"@%":
		return fmt.Errorf("test login as %s: %w: the session is the account %s, not %s@%%, which SetPassword manages", user, dbcred.ErrLogin, current, user)
	case active.String != group:
		return fmt.Errorf("test login as %s: %w: the session acts as role %q, not %s: SetPassword makes %s its default role", user, dbcred.ErrLogin, active.String, group, group)
	}
	return nil
}

// Retire locks the account user@'%', so it cannot log in, then kills
// every session of user and waits, up to 5 s, until they have ended.
func (d *Driver) Retire(ctx context.Context, user string) error {
	if err := checkName("user", user); err != nil {
		return fmt.Errorf("retire: %w", err)
	}
	if user == d.cfg.User {
		return fmt.Errorf("retire %s: it is the admin connection's own user", user)
	}
	// IF EXISTS: a user that does not exist is retired already.
	if _, err := d.db.ExecContext(ctx, "ALTER USER IF EXISTS "+account(user)+" ACCOUNT LOCK"); err != nil {
		return d.redact(fmt.Errorf("retire %s: %w", user, err))
	}
	deadline := time.Now().Add(retireWait)
	for {
		ids, err := d.sessionIDs(ctx, user)
		if err != nil {
			return d.redact(fmt.Errorf("retire %s: %w", user, err))
		}
		if len(ids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("retire %s: %d sessions are still open %v after they were killed", user, len(ids), retireWait)
		}
		// A session being killed stays listed until its thread notices;
		// killing it again is harmless.
		for _, id := range ids {
			_, err := d.db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatUint(id, 10))
			switch {
			case err == nil, serverError(err, errNoSuchThread):
			case serverError(err, errNotOwner):
				return d.redact(fmt.Errorf("retire %s: end session %d: the admin needs the CONNECTION ADMIN privilege to end other users' sessions: %w", user, id, err))
			default:
				return d.redact(fmt.Errorf("retire %s: end session %d: %w", user, id, err))
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sessionIDs are the connection ids of user's sessions.
func (d *Driver) sessionIDs(ctx context.Context, user string) ([]uint64, error) {
	rows, err := d.db.QueryContext(ctx, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()", user)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []uint64
	for rows.Next() {
		var id uint64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// Sessions is the number of sessions user has open, killed ones that
// have not ended yet included.
func (d *Driver) Sessions(ctx context.Context, user string) (int, error) {
	if err := checkName("user", user); err != nil {
		return 0, fmt.Errorf("count sessions: %w", err)
	}
	var n int
	if err := d.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?", user).Scan(&n); err != nil {
		return 0, d.redact(fmt.Errorf("count sessions of %s: %w", user, err))
	}
	return n, nil
}

// Close closes the admin connection.
func (d *Driver) Close() error { return d.db.Close() }

// Server error numbers the driver handles.
const (
	errNoSuchThread = 1094 // ER_NO_SUCH_THREAD: KILL of a session that has ended
	errNotOwner     = 1095 // ER_KILL_DENIED_ERROR: KILL of another user's session without CONNECTION ADMIN
	errInvalidRole  = 1959 // ER_INVALID_ROLE: GRANT of a role that does not exist
)

func serverError(err error, number uint16) bool {
	var me *mysqldriver.MySQLError
	return errors.As(err, &me) && me.Number == number
}

// validName is what a user or group name may be: the names are quoted
// into statements (roles and accounts take no parameters), and this
// alphabet needs no escaping in either quoting.
var validName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

func checkName(kind, name string) error {
	if len(name) == 0 || len(name) > maxName || !validName.MatchString(name) {
		return fmt.Errorf("%s name %q: %w: use 1 to %d of the characters A-Z a-z 0-9 _ . -", kind, name, ErrName, maxName)
	}
	return nil
}

func checkGroup(group string) error {
	if err := checkName("group", group); err != nil {
		return err
	}
	// NONE is SET ROLE's keyword, PUBLIC the role of every user (11.x).
	if strings.EqualFold(group, "none") || strings.EqualFold(group, "public") {
		return fmt.Errorf("group name %q: %w: MariaDB reserves it", group, ErrName)
	}
	return nil
}

func checkPair(user, group string) error {
	if err := checkName("user", user); err != nil {
		return err
	}
	if err := checkGroup(group); err != nil {
		return err
	}
	if user == group {
		return fmt.Errorf("user name %q: %w: it is the group's name too", user, ErrName)
	}
	return nil
}

// account is user's account as a statement names it; role is group's.
// Both take only names checkName accepted.
func account(user string) string { return "'" + user + "'@'%'" }
func role(group string) string   { return "`" + group + "`" }

// nativeHash is password's mysql_native_password hash: "*" and the
// upper-case hex of SHA1(SHA1(password)).
func nativeHash(password string) string {
	first := sha1.Sum([]byte(password))
	second := sha1.Sum(first[:])
	return "*" + strings.ToUpper(hex.EncodeToString(second[:]))
}

// redact keeps the admin password, and secrets, out of err's message.
func (d *Driver) redact(err error, secrets ...string) error {
	return dbcred.Redact(err, append(secrets, d.cfg.Passwd)...)
}
