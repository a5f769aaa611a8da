// Package postgres is the dbcred.Driver for PostgreSQL, through pgx: the
// group is a NOLOGIN role, each user a LOGIN role that is a member of it
// with `ALTER ROLE user SET ROLE group`, so what either user creates is
// owned by the group and stays usable by the other. SetPassword sends the
// server a SCRAM-SHA-256 verifier computed here, never the password.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/graft-sh/graft/dbcred"
)

var _ dbcred.Driver = (*Driver)(nil)

const (
	// maxName is NAMEDATALEN-1: PostgreSQL truncates a longer name to
	// it, and a truncated user would be someone else's.
	maxName = 63
	// testTimeout bounds Test's login and its query.
	testTimeout = 5 * time.Second
	// retireTimeout bounds how long Retire waits for the user's sessions
	// to end once they were told to.
	retireTimeout = 5 * time.Second
	// rotationConns is enough for one rotation's steps and Sessions
	// polled beside them.
	rotationConns = 2
)

// SQLSTATE codes the driver tells apart.
const (
	duplicateObject    = "42710"
	uniqueViolation    = "23505"
	undefinedObject    = "42704"
	invalidPassword    = "28P01"
	invalidAuthSpec    = "28000"
	insufficientPriv   = "42501"
	invalidCatalogName = "3D000"
)

// Driver manages users through a small pool of admin connections; it is
// safe for concurrent use.
type Driver struct {
	pool *pgxpool.Pool
	// login is the admin's connection settings, host, port, database
	// and TLS included, which Test copies and gives a user's
	// credentials.
	login *pgx.ConnConfig
}

// Open connects to the server of adminDSN (a URL or key=value
// connection string; TLS as its sslmode and sslrootcert say) and checks
// that its role may manage users: SUPERUSER, or CREATEROLE and the
// privileges of pg_signal_backend to end a retired user's sessions.
// Errors never hold the DSN or its password. A URL whose user info holds
// an unescaped @ / ? or # is refused before any lookup or connection.
// The pool holds up to two connections, enough for a rotation.
func Open(ctx context.Context, adminDSN string) (*Driver, error) {
	return OpenConns(ctx, adminDSN, rotationConns)
}

// OpenConns is Open with a pool of up to conns connections (at least
// one), for statements run side by side, as dynamic credentials' are.
func OpenConns(ctx context.Context, adminDSN string, conns int) (*Driver, error) {
	if err := checkUserinfo(adminDSN); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(adminDSN)
	if err != nil {
		return nil, dsnError(adminDSN, err)
	}
	cfg.MaxConns = int32(max(conns, 1))
	cfg.MinConns = 0
	// The server's and the network's messages name users, hosts and
	// databases, not passwords; redacting is for the message that would.
	secrets := []string{cfg.ConnConfig.Password}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, dbcred.Redact(fmt.Errorf("open admin connection: %w", err), secrets...)
	}
	d := &Driver{pool: pool, login: cfg.ConnConfig.Copy()}
	if err := d.checkAdmin(ctx); err != nil {
		pool.Close()
		return nil, dbcred.Redact(err, secrets...)
	}
	return d, nil
}

// checkUserinfo refuses a URL whose user info holds an @, /, ? or # that
// is not percent-encoded. pgx would cut the user info at the wrong place
// and take the rest of the password for a host, port or database, which
// it would look up in DNS, connect to and quote in its errors. The URL's
// authority (up to the first / ? or #) must hold at most one @, and an @
// after it is refused when the authority holds none, because then a /, ?
// or # in the password ended it early (a database or parameter with an
// @ takes %40 as well).
func checkUserinfo(dsn string) error {
	rest, ok := strings.CutPrefix(dsn, "postgres://")
	if !ok {
		if rest, ok = strings.CutPrefix(dsn, "postgresql://"); !ok {
			return nil
		}
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	const encode = "percent-encode a user name's or password's @ as %40, / as %2F, ? as %3F, # as %23 and % as %25 (the DSN was not used)"
	switch n := strings.Count(rest[:end], "@"); {
	case n > 1:
		return fmt.Errorf("admin DSN: its user info holds an unescaped @: %s", encode)
	case n == 0 && strings.Contains(rest[end:], "@"):
		return fmt.Errorf("admin DSN: its user info holds an unescaped /, ? or # (or its database or a parameter an unescaped @): %s", encode)
	}
	return nil
}

// dsnError is err, pgx's failure to parse the admin DSN, without the DSN.
// pgx's message quotes the DSN with the passwords it recognizes masked,
// which in a malformed DSN it may not all be, and the error it wraps (its
// keyword/value parser's, strconv's) can quote parts of the DSN as they
// are. What remains is pgx's own description, the wrapped error only
// where it is about the TLS files, and a hint for URLs.
func dsnError(dsn string, err error) error {
	const prefix = "admin DSN does not parse"
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return errors.New(prefix)
	}
	bare := *pe
	bare.ConnString = ""
	reason, ok := strings.CutPrefix(bare.Error(), "cannot parse ``: ")
	tls := false
	if inner := pe.Unwrap(); inner != nil && ok {
		reason, ok = strings.CutSuffix(reason, " ("+inner.Error()+")")
		if tls = reason == "failed to configure TLS"; ok && tls {
			reason += ": " + inner.Error()
		}
	}
	if !ok { // a pgx whose message reads otherwise: say nothing rather than too much
		return errors.New(prefix)
	}
	if !tls && (strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")) {
		reason += " (in a URL, a password's spaces and @ : / ? # % must be percent-encoded)"
	}
	return fmt.Errorf("%s: %s", prefix, reason)
}

// checkAdmin reports an admin role that cannot manage users before a
// rotation finds out halfway.
func (d *Driver) checkAdmin(ctx context.Context) error {
	var (
		name                             string
		super, createRole, signalBackend bool
	)
	err := d.pool.QueryRow(ctx, `
		SELECT r.rolname, r.rolsuper, r.rolcreaterole,
		       pg_has_role(current_user, 'pg_signal_backend', 'USAGE')
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&name, &super, &createRole, &signalBackend)
	if err != nil {
		return fmt.Errorf("open admin connection: %w", err)
	}
	if !super && !(createRole && signalBackend) {
		return fmt.Errorf("admin role %s cannot manage users: it needs SUPERUSER, or CREATEROLE and the privileges of pg_signal_backend (GRANT pg_signal_backend TO %s) to end a retired user's sessions",
			name, pgx.Identifier{name}.Sanitize())
	}
	return nil
}

// Close closes the admin connections.
func (d *Driver) Close() error {
	d.pool.Close()
	return nil
}

// EnsureGroup creates group as a NOLOGIN role if no role has its name.
// An existing role is used as it is: it may be the user an application
// logged in as before rotation, whose grants and objects the pair then
// shares while it keeps working.
func (d *Driver) EnsureGroup(ctx context.Context, group string) error {
	if err := checkName("group", group); err != nil {
		return err
	}
	exists, err := d.roleExists(ctx, group)
	if err != nil {
		return fmt.Errorf("ensure group %s: %w", group, err)
	}
	if exists {
		return nil
	}
	_, err = d.pool.Exec(ctx, "CREATE ROLE "+ident(group)+" NOLOGIN")
	if err != nil && !createdMeanwhile(err) {
		return fmt.Errorf("create group %s: %w", group, err)
	}
	return nil
}

// SetPassword creates user, or alters it, to log in with password as a
// member of group that acts as group from login on. The three changes
// commit together: a user never logs in with the new password but
// without the group's role.
func (d *Driver) SetPassword(ctx context.Context, user, group, password string) error {
	if err := checkPair(user, group); err != nil {
		return err
	}
	if err := checkPassword(password); err != nil {
		return fmt.Errorf("set password of %s: %w", user, err)
	}
	verifier, err := newVerifier(password)
	if err != nil {
		return fmt.Errorf("set password of %s: %w", user, err)
	}
	err = d.setPassword(ctx, user, group, verifier)
	if createdMeanwhile(err) { // by another SetPassword: now this one alters
		err = d.setPassword(ctx, user, group, verifier)
	}
	if err != nil {
		return fmt.Errorf("set password of %s: %w", user, err)
	}
	return nil
}

func (d *Driver) setPassword(ctx context.Context, user, group, verifier string) error {
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var exists, member bool
		err := tx.QueryRow(ctx, `
			SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
			       EXISTS (SELECT 1 FROM pg_auth_members m
			               JOIN pg_roles g ON g.oid = m.roleid
			               JOIN pg_roles u ON u.oid = m.member
			               WHERE u.rolname = $1 AND g.rolname = $2)`, user, group).Scan(&exists, &member)
		if err != nil {
			return err
		}
		// A verifier is base64 and $ : only; literal() is for form.
		set := "CREATE ROLE " + ident(user) + " LOGIN PASSWORD " + literal(verifier)
		if exists {
			set = "ALTER ROLE " + ident(user) + " WITH LOGIN PASSWORD " + literal(verifier)
		}
		if _, err := tx.Exec(ctx, set); err != nil {
			return err
		}
		if !member {
			if _, err := tx.Exec(ctx, "GRANT "+ident(group)+" TO "+ident(user)); err != nil {
				return fmt.Errorf("grant %s: %w", group, err)
			}
		}
		if _, err := tx.Exec(ctx, "ALTER ROLE "+ident(user)+" SET ROLE "+ident(group)); err != nil {
			return fmt.Errorf("set role %s at login: %w", group, err)
		}
		return nil
	})
}

// Test logs in as user with password on a new connection, to the admin
// connection's host, port and database with its TLS settings, and
// checks that the session is user's and acts as group. A refused login
// or a session that does not act as group is dbcred.ErrLogin; a server
// that cannot be reached is not.
func (d *Driver) Test(ctx context.Context, user, group, password string) error {
	if err := checkPair(user, group); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	cfg := d.login.Copy()
	cfg.User, cfg.Password = user, password
	// An admin DSN's role setting is the admin's; the user's own SET
	// ROLE is what is tested.
	delete(cfg.RuntimeParams, "role")
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return loginError(user, group, cfg.Database, err)
	}
	defer func() {
		closing, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		conn.Close(closing)
	}()

	var session, current string
	var groupExists, member bool
	err = conn.QueryRow(ctx, `
		SELECT session_user, current_user,
		       EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
		       COALESCE(pg_has_role(session_user, (SELECT oid FROM pg_roles WHERE rolname = $1), 'MEMBER'), false)`,
		group).Scan(&session, &current, &groupExists, &member)
	if err != nil {
		return fmt.Errorf("test login as %s: %w", user, err)
	}
	switch {
	case session != user:
		return fmt.Errorf("test login as %s: %w: the session is %s's", user, dbcred.ErrLogin, session)
	case !groupExists:
		return fmt.Errorf("test login as %s: %w: group %s does not exist", user, dbcred.ErrLogin, group)
	case !member:
		return fmt.Errorf("test login as %s: %w: %s is not a member of group %s", user, dbcred.ErrLogin, user, group)
	case current != group:
		return fmt.Errorf("test login as %s: %w: SET ROLE %s is not in effect, the session acts as %s (ALTER ROLE %s SET ROLE %s, which SetPassword does, or a per-database setting overrides it)",
			user, dbcred.ErrLogin, group, current, ident(user), ident(group))
	}
	return nil
}

// loginError says why a Test login failed. The server's message names
// the user, never the password.
func loginError(user, group, database string, err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return fmt.Errorf("test login as %s: %w", user, err)
	}
	var reason string
	switch pe.Code {
	case invalidPassword:
		reason = "the password was refused (or the user does not exist, or its password expired)"
	case invalidAuthSpec:
		reason = "the user may not log in (NOLOGIN, or no pg_hba.conf entry lets it)"
	case insufficientPriv:
		reason = fmt.Sprintf("the login was refused its settings or database %s (it may lack CONNECT, or the right to SET ROLE %s)", database, group)
	case invalidCatalogName:
		reason = fmt.Sprintf("database %s does not exist", database)
	default:
		return fmt.Errorf("test login as %s: %w", user, err)
	}
	return fmt.Errorf("test login as %s: %w: %s: %w", user, dbcred.ErrLogin, reason, pe)
}

// Retire stops user from logging in, ends its sessions, and waits until
// they are gone.
func (d *Driver) Retire(ctx context.Context, user string) error {
	if err := checkName("user", user); err != nil {
		return err
	}
	if user == d.login.User {
		return fmt.Errorf("retire %s: it is the admin role this driver connects as", user)
	}
	exists, err := d.roleExists(ctx, user)
	if err != nil {
		return fmt.Errorf("retire %s: %w", user, err)
	}
	if !exists {
		return nil
	}
	_, err = d.pool.Exec(ctx, "ALTER ROLE "+ident(user)+" NOLOGIN")
	if isCode(err, undefinedObject) { // dropped meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("retire %s: %w", user, err)
	}
	return d.endSessions(ctx, user)
}

// endSessions terminates user's backends until none is left. It asks
// again each round: a login that passed authentication before NOLOGIN
// committed can show up after the first round.
func (d *Driver) endSessions(ctx context.Context, user string) error {
	lingering := fmt.Errorf("end sessions of %s: some are still open after %s", user, retireTimeout)
	ctx, cancel := context.WithTimeoutCause(ctx, retireTimeout, lingering)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var seen int
		err := d.pool.QueryRow(ctx, `
			SELECT count(pg_terminate_backend(pid))
			FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()`, user).Scan(&seen)
		switch {
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case err != nil:
			return fmt.Errorf("end sessions of %s: %w", user, err)
		case seen == 0:
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
		}
	}
}

// Sessions is the number of backends logged in as user.
func (d *Driver) Sessions(ctx context.Context, user string) (int, error) {
	if err := checkName("user", user); err != nil {
		return 0, err
	}
	var n int
	if err := d.pool.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", user).Scan(&n); err != nil {
		return 0, fmt.Errorf("count sessions of %s: %w", user, err)
	}
	return n, nil
}

func (d *Driver) roleExists(ctx context.Context, name string) (bool, error) {
	var exists bool
	err := d.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&exists)
	return exists, err
}

// checkName refuses a role name PostgreSQL would change or refuse.
func checkName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s name is empty", kind)
	case len(name) > maxName:
		return fmt.Errorf("%s name %.20q… is %d bytes: PostgreSQL keeps %d and would truncate it", kind, name, len(name), maxName)
	case !utf8.ValidString(name) || strings.ContainsRune(name, 0):
		return fmt.Errorf("%s name %q: want UTF-8 without NUL", kind, name)
	case strings.HasPrefix(name, "pg_"):
		return fmt.Errorf("%s name %q: PostgreSQL reserves names that begin with pg_", kind, name)
	}
	return nil
}

func checkPair(user, group string) error {
	if err := errors.Join(checkName("user", user), checkName("group", group)); err != nil {
		return err
	}
	if user == group {
		return fmt.Errorf("user %s is its own group: want a group role apart from the users", user)
	}
	return nil
}

// checkPassword lets through printable ASCII, which the SCRAM verifier
// takes as it is (see scramVerifier). It never quotes the password.
func checkPassword(password string) error {
	if password == "" {
		return errors.New("password is empty")
	}
	for i := 0; i < len(password); i++ {
		if c := password[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("password has a character outside printable ASCII at byte %d: want printable ASCII", i)
		}
	}
	return nil
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// literal quotes s as a standard SQL string (standard_conforming_strings
// is on since PostgreSQL 9.1, so a backslash is not special).
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// createdMeanwhile says err is a CREATE ROLE (or GRANT) that found its
// role (or membership) created since it looked: duplicate_object if the
// other committed first, unique_violation on the catalog's index if it
// committed while this one waited for it.
func createdMeanwhile(err error) bool {
	return isCode(err, duplicateObject) || isCode(err, uniqueViolation)
}

func isCode(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}
