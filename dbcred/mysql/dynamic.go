package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/graft-sh/graft/dbcred"
)

// The driver's dynamic credentials: an account per lease, made, renewed
// and dropped by the role's statements, each list run in order on one
// connection of its own.
//
// {{password}} is replaced by the password's mysql_native_password hash,
// never the password, so a role's creation_sql writes
//
//	CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'
//	GRANT SELECT ON app.* TO '{{name}}'@'%'
//
// (IDENTIFIED VIA mysql_native_password USING '{{password}}' and
// SET PASSWORD FOR … = '{{password}}' take the hash too). MariaDB writes
// statements into its general, slow and binary logs as sent: they hold
// the hash, never the password. CreateUser refuses {{password}} anywhere
// else, such as IDENTIFIED BY '{{password}}', which would make the hash
// itself the password.
//
// Beyond Open's privileges the admin needs SELECT on mysql.user, to see
// which users exist, and every privilege the statements grant, WITH
// GRANT OPTION.

var _ dbcred.Dynamic = (*Driver)(nil)

const (
	// cleanupTimeout bounds dropping what a failed CreateUser made,
	// which runs even when the caller's context has ended.
	cleanupTimeout = 10 * time.Second
	// minHashPiece is the shortest run of the hash's hex digits an error
	// is scrubbed of when the server quotes a piece of a statement.
	minHashPiece = 4
)

// Server error numbers of statements on a user that does not exist.
const (
	errTableAccess   = 1142 // ER_TABLEACCESS_DENIED_ERROR: SELECT on mysql.user denied
	errNoMatchingRow = 1133 // ER_PASSWORD_NO_MATCH: GRANT to a user that does not exist
	errNoSuchGrant   = 1141 // ER_NONEXISTING_GRANT: REVOKE from one
	errCannotUser    = 1396 // ER_CANNOT_USER: ALTER or DROP USER of one
)

// MaxUsername is 80, MariaDB's limit on user names before 10.6 (128
// since), so a name fits every supported version. MySQL's limit is 32,
// but Open refuses MySQL.
func (d *Driver) MaxUsername() int { return maxName }

// CreateUser runs statements in order on one connection, with {{name}},
// {{password}} (as the password's hash) and {{expiration}} replaced. It
// cannot be one transaction: MariaDB commits CREATE USER and GRANT at
// once. So a user of that name must not exist beforehand, and when a
// statement fails every account of that name the earlier ones made is
// dropped (DROP USER IF EXISTS) before the error is returned. The error
// names the statement by its index in creation_sql and carries the
// server's message, scrubbed of the hash and of any piece of it the
// server quoted, never the statement's text.
func (d *Driver) CreateUser(ctx context.Context, statements []string, u dbcred.NewUser) error {
	if err := d.checkDynamicUser(u.Name); err != nil {
		return fmt.Errorf("create user: %w", err)
	}
	if len(statements) == 0 {
		return fmt.Errorf("create user %s: no creation_sql to run", u.Name)
	}
	if err := checkStatements("creation_sql", statements, u.Expiration, true); err != nil {
		return fmt.Errorf("create user %s: %w", u.Name, err)
	}
	if u.Password == "" {
		return fmt.Errorf("create user %s: the password is empty", u.Name)
	}
	hash := nativeHash(u.Password)
	ran := false
	err := d.withConn(ctx, func(conn *sql.Conn) error {
		// The cleanup drops every account of the name: one that was
		// there before is not this lease's to drop.
		hosts, err := accounts(ctx, conn, u.Name)
		if err != nil {
			return err
		}
		if len(hosts) > 0 {
			return fmt.Errorf("the account %s@%s exists already: a lease's user needs a name no account has", u.Name, hosts[0])
		}
		ran = true
		return run(ctx, conn, "creation_sql", statements, func(s string) string {
			return dbcred.Expand(s, u.Name, hash, u.Expiration)
		})
	})
	if err == nil {
		return nil
	}
	err = fmt.Errorf("create user %s: %w", u.Name, err)
	if !ran {
		return d.redact(err)
	}
	// The connection may have died with the statement (a cancelled
	// context closes it): clean up on another, whatever ctx says.
	cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if cleanupErr := dropAccounts(cleanupCtx, d.db, u.Name); cleanupErr != nil {
		err = fmt.Errorf("%w; dropping what the statements before it made failed too, so drop the user %s yourself: %w", err, u.Name, cleanupErr)
	}
	return d.redact(err, hashSecrets(err.Error(), u.Password, hash)...)
}

// RenewUser runs statements, with {{name}} and {{expiration}} replaced,
// in order on one connection. With none it runs nothing: MariaDB has no
// validity of an account that ends at a given time (PASSWORD EXPIRE
// INTERVAL counts whole days and still lets the user log in to change
// it), so the user lasts until graft's lease reaper revokes it when its
// lease ends, and renewing the lease is all a renewal does. A user that
// does not exist is dbcred.ErrNoUser.
func (d *Driver) RenewUser(ctx context.Context, statements []string, user string, expiration time.Time) error {
	if err := d.checkDynamicUser(user); err != nil {
		return fmt.Errorf("renew user: %w", err)
	}
	if expiration.IsZero() {
		return fmt.Errorf("renew user %s: no expiration", user)
	}
	if err := checkStatements("renew_sql", statements, expiration, false); err != nil {
		return fmt.Errorf("renew user %s: %w", user, err)
	}
	err := d.withConn(ctx, func(conn *sql.Conn) error {
		hosts, err := accounts(ctx, conn, user)
		if err != nil {
			return err
		}
		if len(hosts) == 0 {
			return dbcred.ErrNoUser
		}
		return run(ctx, conn, "renew_sql", statements, func(s string) string {
			return dbcred.Expand(s, user, "", expiration)
		})
	})
	if err != nil {
		return d.redact(fmt.Errorf("renew user %s: %w", user, d.goneMeanwhile(ctx, user, err)))
	}
	return nil
}

// RevokeUser locks every account named user, so it cannot log in again,
// ends its sessions (waiting up to 5 s for them to go), then runs
// statements in order on one connection. With none it drops every
// account named user, which takes its grants with it; MariaDB has no
// owners of objects, so there is nothing to hand to the admin.
//
// A user that does not exist is revoked already: RevokeUser succeeds
// without running statements. A revocation that fails leaves the user
// locked and without sessions, to be revoked again.
func (d *Driver) RevokeUser(ctx context.Context, statements []string, user string) error {
	if err := d.checkDynamicUser(user); err != nil {
		return fmt.Errorf("revoke user: %w", err)
	}
	if err := checkStatements("revocation_sql", statements, time.Time{}, false); err != nil {
		return fmt.Errorf("revoke user %s: %w", user, err)
	}
	hosts, err := accounts(ctx, d.db, user)
	if err != nil {
		return d.redact(fmt.Errorf("revoke user %s: %w", user, err))
	}
	if len(hosts) == 0 {
		return nil
	}
	// Locked first, or a pool would log in again as soon as its
	// sessions were ended. Retire locks user@'%' and ends the sessions.
	for _, host := range hosts {
		if err := onAccounts(ctx, d.db, "ALTER USER IF EXISTS", user, host, " ACCOUNT LOCK"); err != nil {
			return d.redact(fmt.Errorf("revoke user %s: lock: %w", user, err))
		}
	}
	if err := d.Retire(ctx, user); err != nil {
		return fmt.Errorf("revoke user %s: %w", user, err)
	}
	err = d.withConn(ctx, func(conn *sql.Conn) error {
		if len(statements) == 0 {
			return dropAccounts(ctx, conn, user)
		}
		return run(ctx, conn, "revocation_sql", statements, func(s string) string {
			return dbcred.Expand(s, user, "", time.Time{})
		})
	})
	if err != nil {
		if errors.Is(d.goneMeanwhile(ctx, user, err), dbcred.ErrNoUser) {
			return nil
		}
		return d.redact(fmt.Errorf("revoke user %s: %w", user, err))
	}
	return nil
}

// UserExists reports whether an account named user exists, on any host.
func (d *Driver) UserExists(ctx context.Context, user string) (bool, error) {
	if err := checkDynamicName(user); err != nil {
		return false, fmt.Errorf("look up user: %w", err)
	}
	hosts, err := accounts(ctx, d.db, user)
	if err != nil {
		return false, d.redact(fmt.Errorf("look up user %s: %w", user, err))
	}
	return len(hosts) > 0, nil
}

// withConn runs f on a connection of its own, given back to the pool
// before withConn returns: nothing that f calls may wait for another
// one, which with the pool's few connections could wait forever.
func (d *Driver) withConn(ctx context.Context, f func(*sql.Conn) error) error {
	conn, err := d.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return f(conn)
}

// querier is a connection, or the pool.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// run runs statements on conn in order, each expanded, as text (no
// parameters). The error names the statement by what[i], never by its
// text, which may hold the hash.
func run(ctx context.Context, conn *sql.Conn, what string, statements []string, expand func(string) string) error {
	for i, s := range statements {
		if _, err := conn.ExecContext(ctx, expand(s)); err != nil {
			return fmt.Errorf("%s[%d]: %w", what, i, err)
		}
	}
	return nil
}

// accounts are the hosts of the accounts named user (roles left out).
func accounts(ctx context.Context, q querier, user string) ([]string, error) {
	rows, err := q.QueryContext(ctx, "SELECT Host FROM mysql.user WHERE User = ? AND is_role = 'N' ORDER BY Host", user)
	if serverError(err, errTableAccess) {
		return nil, fmt.Errorf("the admin needs SELECT on mysql.user to see which users exist (GRANT SELECT ON mysql.user TO it): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("look up the accounts: %w", err)
	}
	defer rows.Close()
	var hosts []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	return hosts, rows.Err()
}

// dropAccounts drops every account named user.
func dropAccounts(ctx context.Context, q querier, user string) error {
	hosts, err := accounts(ctx, q, user)
	if err != nil {
		return err
	}
	for _, host := range hosts {
		if err := onAccounts(ctx, q, "DROP USER IF EXISTS", user, host, ""); err != nil {
			return err
		}
	}
	return nil
}

// validHost is a host the driver quotes into a statement: a name, an
// address, a netmask or a pattern, none of which needs escaping.
var validHost = regexp.MustCompile(`^[A-Za-z0-9._%:/-]*$`)

// onAccounts runs verb 'user'@'host' rest.
func onAccounts(ctx context.Context, q querier, verb, user, host, rest string) error {
	if !validHost.MatchString(host) {
		return fmt.Errorf("the account %s@%q has a host graft does not quote: drop it yourself", user, host)
	}
	if _, err := q.ExecContext(ctx, verb+" '"+user+"'@'"+host+"'"+rest); err != nil {
		return fmt.Errorf("%s %s@%s: %w", strings.ToLower(verb), user, host, err)
	}
	return nil
}

// goneMeanwhile is dbcred.ErrNoUser if err says a statement's user does
// not exist and the user is gone since it was looked up (revoked by
// another call), and err otherwise.
func (d *Driver) goneMeanwhile(ctx context.Context, user string, err error) error {
	if !serverError(err, errCannotUser) && !serverError(err, errNoMatchingRow) && !serverError(err, errNoSuchGrant) {
		return err
	}
	if hosts, lookup := accounts(ctx, d.db, user); lookup == nil && len(hosts) == 0 {
		return dbcred.ErrNoUser
	}
	return err
}

// checkDynamicUser refuses a name that is not a dynamic user's, and the
// admin's own: a revocation would lock and drop it.
func (d *Driver) checkDynamicUser(user string) error {
	if err := checkDynamicName(user); err != nil {
		return err
	}
	if user == d.cfg.User {
		return fmt.Errorf("user %s is the admin this driver connects as", user)
	}
	return nil
}

// checkDynamicName refuses a name outside the alphabet
// dbcred.Role.Username draws from: statements quote {{name}} as
// '{{name}}', which such a name cannot break out of in any sql_mode.
func checkDynamicName(user string) error {
	ok := len(user) > 0 && len(user) <= maxName
	for _, c := range user {
		ok = ok && (c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_')
	}
	if !ok {
		return fmt.Errorf("user name %q: %w: a dynamic user's name is 1 to %d of a-z 0-9 - _", user, ErrName, maxName)
	}
	return nil
}

// passwordClause is {{password}} where MariaDB reads a hash.
var passwordClause = regexp.MustCompile(`(?i)(\bPASSWORD|\bUSING|=)\s*'\{\{password\}\}'`)

// checkStatements refuses what would run other than meant: an empty
// statement; {{password}} outside creation (it would be replaced by an
// empty string) or, in creation, where MariaDB would take the hash for
// a plain password; and {{expiration}} without one.
func checkStatements(what string, statements []string, expiration time.Time, password bool) error {
	if err := dbcred.CheckStatements(what, statements, expiration, password); err != nil {
		return err
	}
	for i, s := range statements {
		if strings.Count(s, dbcred.PlaceholderPassword) != len(passwordClause.FindAllStringIndex(s, -1)) {
			return fmt.Errorf("%s[%d] has %s where MariaDB would take it for a plain password: it is replaced by the password's hash, which MariaDB reads in IDENTIFIED BY PASSWORD '%[3]s' (or IDENTIFIED VIA mysql_native_password USING '%[3]s')", what, i, dbcred.PlaceholderPassword)
		}
	}
	return nil
}

// hexRun is a run of hex digits in a message.
var hexRun = regexp.MustCompile(`[0-9A-Fa-f]{` + fmt.Sprint(minHashPiece) + `,}`)

// hashSecrets is what msg, an error about statements holding hash, must
// not show: the password, the hash, and each run of hex digits in msg
// that is a piece of the hash's. A syntax error quotes at most 80
// characters of the statement from where the parser stopped, which may
// cut the hash anywhere.
func hashSecrets(msg, password, hash string) []string {
	digits := strings.TrimPrefix(hash, "*")
	secrets := []string{password, hash, digits}
	for _, run := range hexRun.FindAllString(msg, -1) {
		if strings.Contains(digits, strings.ToUpper(run)) {
			secrets = append(secrets, run)
		}
	}
	return secrets
}
