package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/graft-sh/graft/dbcred"
)

// The driver's dynamic credentials: a LOGIN role per lease, made, renewed
// and dropped by the role's statements. {{password}} is replaced by the
// SCRAM-SHA-256 verifier of the password, which PostgreSQL takes in
// PASSWORD '...' and stores as it is: the password never reaches the
// server or its log, only the verifier does (and the log holds it only
// where log_statement, or a failing statement with
// log_min_error_statement, records it).

var _ dbcred.Dynamic = (*Driver)(nil)

// DefaultRenewal is what RenewUser runs for a role without renew_sql.
const DefaultRenewal = `ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}'`

// dependentObjects is the SQLSTATE of DROP ROLE refused because the role
// still owns objects or holds privileges (in another database).
const dependentObjects = "2BP01"

// MaxUsername is the longest role name PostgreSQL keeps, NAMEDATALEN-1.
func (d *Driver) MaxUsername() int { return maxName }

// CreateUser runs statements in one transaction, each (a statement or
// several separated by semicolons) as a simple query with {{name}},
// {{password}} and {{expiration}} replaced: {{password}} by the
// password's SCRAM-SHA-256 verifier, so `PASSWORD '{{password}}'` is the
// only place it means what it says. A statement that fails rolls back
// every one before it; the error names it by its index in creation_sql
// and carries the server's message, with the verifier redacted, never
// the statement's text.
func (d *Driver) CreateUser(ctx context.Context, statements []string, u dbcred.NewUser) error {
	if err := d.checkDynamicUser(u.Name); err != nil {
		return fmt.Errorf("create user: %w", err)
	}
	if len(statements) == 0 {
		return fmt.Errorf("create user %s: no creation_sql to run", u.Name)
	}
	if err := dbcred.CheckStatements("creation_sql", statements, u.Expiration, true); err != nil {
		return fmt.Errorf("create user %s: %w", u.Name, err)
	}
	if err := checkPassword(u.Password); err != nil {
		return fmt.Errorf("create user %s: %w", u.Name, err)
	}
	verifier, err := newVerifier(u.Password)
	if err != nil {
		return fmt.Errorf("create user %s: %w", u.Name, err)
	}
	err = d.inTx(ctx, func(tx pgx.Tx) error {
		return run(ctx, tx, "creation_sql", statements, func(s string) string {
			return dbcred.Expand(s, u.Name, verifier, u.Expiration)
		})
	})
	if err != nil {
		if rowTooBig(err) {
			err = fmt.Errorf("%w: an object's privileges are kept in its catalog row, which direct grants to some thousands of users fill: grant them to a group role once and make each user a member instead (CREATE ROLE \"{{name}}\" ... IN ROLE <group>)", err)
		}
		// The server quotes a literal it cannot read ("invalid input
		// syntax for type integer: \"SCRAM-SHA-256$...\"") and a token it
		// trips over, which may be the verifier or a piece of it.
		return dbcred.Redact(fmt.Errorf("create user %s: %w", u.Name, err), verifierSecrets(u.Password, verifier)...)
	}
	return nil
}

// RenewUser runs statements (none: DefaultRenewal) in one transaction,
// {{expiration}} being expiration. A user that does not exist is
// dbcred.ErrNoUser.
func (d *Driver) RenewUser(ctx context.Context, statements []string, user string, expiration time.Time) error {
	if err := d.checkDynamicUser(user); err != nil {
		return fmt.Errorf("renew user: %w", err)
	}
	if expiration.IsZero() {
		return fmt.Errorf("renew user %s: no expiration", user)
	}
	if len(statements) == 0 {
		statements = []string{DefaultRenewal}
	}
	if err := dbcred.CheckStatements("renew_sql", statements, expiration, false); err != nil {
		return fmt.Errorf("renew user %s: %w", user, err)
	}
	exists, err := d.roleExists(ctx, user)
	if err != nil {
		return fmt.Errorf("renew user %s: %w", user, err)
	}
	if !exists {
		return fmt.Errorf("renew user %s: %w", user, dbcred.ErrNoUser)
	}
	err = d.inTx(ctx, func(tx pgx.Tx) error {
		return run(ctx, tx, "renew_sql", statements, func(s string) string {
			return dbcred.Expand(s, user, "", expiration)
		})
	})
	if err != nil {
		return fmt.Errorf("renew user %s: %w", user, d.goneMeanwhile(ctx, user, err))
	}
	return nil
}

// RevokeUser stops user from logging in (NOLOGIN, committed at once),
// ends its sessions, then runs statements in one transaction. With no
// statements it hands what user owns to the admin's current role
// (REASSIGN OWNED), drops its privileges and default privileges (DROP
// OWNED) and drops it; a CREATEROLE admin that lacks user's privileges,
// which REASSIGN and DROP OWNED need, is granted membership in user
// first, in the same transaction. REASSIGN and DROP OWNED reach the
// current database only (and the cluster's databases and tablespaces):
// a user that owns objects or holds privileges in another database
// cannot be dropped, and the error says so; revocation_sql then has to
// be run in each of them, or the user kept from being granted there.
//
// A user that does not exist is revoked already: RevokeUser succeeds
// without running statements. A revocation that fails leaves the user
// unable to log in and without sessions, to be revoked again.
func (d *Driver) RevokeUser(ctx context.Context, statements []string, user string) error {
	if err := d.checkDynamicUser(user); err != nil {
		return fmt.Errorf("revoke user: %w", err)
	}
	if len(statements) > 0 {
		if err := dbcred.CheckStatements("revocation_sql", statements, time.Time{}, false); err != nil {
			return fmt.Errorf("revoke user %s: %w", user, err)
		}
	}
	// Without NOLOGIN first, a pool would log in again as soon as its
	// sessions were ended, and keep a dropped role's session open.
	_, err := d.pool.Exec(ctx, "ALTER ROLE "+ident(user)+" NOLOGIN")
	if isCode(err, undefinedObject) { // never made, or dropped already
		return nil
	}
	if err != nil {
		return fmt.Errorf("revoke user %s: %w", user, err)
	}
	if err := d.endSessions(ctx, user); err != nil {
		return fmt.Errorf("revoke user %s: %w", user, err)
	}
	err = d.inTx(ctx, func(tx pgx.Tx) error {
		if len(statements) == 0 {
			return dropUser(ctx, tx, user)
		}
		return run(ctx, tx, "revocation_sql", statements, func(s string) string {
			return dbcred.Expand(s, user, "", time.Time{})
		})
	})
	if err != nil {
		if err := d.goneMeanwhile(ctx, user, err); errors.Is(err, dbcred.ErrNoUser) {
			return nil
		}
		return fmt.Errorf("revoke user %s: %w", user, err)
	}
	return nil
}

// rowTooBig reports whether err is the server's refusal of a catalog row
// that no longer fits in a page, as a table's ACL does once some 2,400
// users were granted on it one by one.
func rowTooBig(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == programLimitExceeded && strings.HasPrefix(pe.Message, "row is too big")
}

// programLimitExceeded is the SQLSTATE of a row, or another object,
// larger than the server allows.
const programLimitExceeded = "54000"

// turnLock is the key of the transaction-level advisory lock that a
// role's statements take when they run again ("graftdbc").
const turnLock = 0x6772616674646263

// turns bounds how often inTx runs a transaction that met another.
const turns = 8

// inTx runs fn in a transaction, again while it fails only because
// another transaction changed the same catalog row meanwhile. PostgreSQL
// changes an object's ACL (GRANT, REVOKE, DROP OWNED) in place, and of
// two transactions that change the same one at once, the second fails
// with "tuple concurrently updated" instead of waiting: users granted on
// the same tables, made or dropped side by side, meet often. Statements
// that touch only their own user (CREATE ROLE ... IN ROLE <group>, the
// default renewal) never meet, and run side by side. A transaction that
// met another runs again after taking an advisory lock, so those that
// met take turns, from any graftd, while the rest do not wait for them.
func (d *Driver) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	for turn := 1; ; turn++ {
		err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
			if turn > 1 {
				if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(turnLock)); err != nil {
					return fmt.Errorf("wait for the other statements on this database: %w", err)
				}
			}
			return fn(tx)
		})
		if err == nil || !metAnother(err) || turn == turns || ctx.Err() != nil {
			return err
		}
	}
}

// metAnother reports whether err is the server's refusal of a
// transaction that another changed the same rows under: a catalog row
// updated concurrently (reported as an internal error, XX000), a
// deadlock, or a serialization failure.
func metAnother(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case deadlockDetected, serializationFailure:
		return true
	case internalError:
		return strings.HasPrefix(pe.Message, "tuple concurrently ")
	}
	return false
}

// SQLSTATEs of transactions that met another.
const (
	internalError        = "XX000"
	deadlockDetected     = "40P01"
	serializationFailure = "40001"
)

// dropUser is the default revocation of user, whose sessions are gone.
func dropUser(ctx context.Context, tx pgx.Tx, user string) error {
	var privileged bool
	err := tx.QueryRow(ctx, "SELECT pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = $1), 'USAGE')", user).Scan(&privileged)
	if err != nil {
		return fmt.Errorf("check the admin's privileges over the user: %w", err)
	}
	if !privileged { // a CREATEROLE admin; a superuser has them all
		if _, err := tx.Exec(ctx, "GRANT "+ident(user)+" TO CURRENT_USER"); err != nil {
			return fmt.Errorf("grant the user's privileges to the admin, which REASSIGN and DROP OWNED need: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, "REASSIGN OWNED BY "+ident(user)+" TO CURRENT_USER"); err != nil {
		return fmt.Errorf("hand what the user owns to the admin: %w", err)
	}
	if _, err := tx.Exec(ctx, "DROP OWNED BY "+ident(user)); err != nil {
		return fmt.Errorf("drop the user's privileges: %w", err)
	}
	_, err = tx.Exec(ctx, "DROP ROLE IF EXISTS "+ident(user))
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == dependentObjects {
		// The detail lists what depends on the role, and where: object
		// and database names, no secret.
		return fmt.Errorf("drop role: it owns objects or holds privileges in another database, which REASSIGN and DROP OWNED run here do not reach (%s); revoke them there, or give the role revocation_sql that does: %w",
			strings.ReplaceAll(pe.Detail, "\n", "; "), err)
	}
	if err != nil {
		return fmt.Errorf("drop role: %w", err)
	}
	return nil
}

// UserExists reports whether a role named user exists.
func (d *Driver) UserExists(ctx context.Context, user string) (bool, error) {
	if err := checkDynamicName(user); err != nil {
		return false, fmt.Errorf("look up user: %w", err)
	}
	exists, err := d.roleExists(ctx, user)
	if err != nil {
		return false, fmt.Errorf("look up user %s: %w", user, err)
	}
	return exists, nil
}

// run runs statements in tx, each expanded, as simple queries (no
// parameters, several statements to a string allowed). The error names
// the statement by what[i], never by its text, which may hold the
// verifier.
func run(ctx context.Context, tx pgx.Tx, what string, statements []string, expand func(string) string) error {
	for i, s := range statements {
		if _, err := tx.Exec(ctx, expand(s), pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("%s[%d]: %w", what, i, err)
		}
	}
	return nil
}

// goneMeanwhile is dbcred.ErrNoUser if err came from statements run on
// a user dropped since it was looked up, and err otherwise.
func (d *Driver) goneMeanwhile(ctx context.Context, user string, err error) error {
	if !isCode(err, undefinedObject) {
		return err
	}
	if exists, lookup := d.roleExists(ctx, user); lookup == nil && !exists {
		return dbcred.ErrNoUser
	}
	return err
}

// checkDynamicUser refuses a name that is not a dynamic user's, and the
// admin's own: its statements could change the admin's password, and
// the default revocation would drop everything the admin owns.
func (d *Driver) checkDynamicUser(user string) error {
	if err := checkDynamicName(user); err != nil {
		return err
	}
	if user == d.login.User || user == d.login.RuntimeParams["role"] {
		return fmt.Errorf("user %s is the admin role this driver connects as", user)
	}
	return nil
}

// checkDynamicName refuses a name PostgreSQL would change or refuse, and
// one outside the alphabet dbcred.Role.Username draws from (a-z, 0-9, -
// and _): statements quote {{name}} as "{{name}}", which such a name
// cannot break out of.
func checkDynamicName(user string) error {
	if err := checkName("user", user); err != nil {
		return err
	}
	for _, c := range user {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("user name %q: want only a-z, 0-9, - and _", user)
		}
	}
	return nil
}

// verifierSecrets is what an error about statements holding verifier
// must not show: the password, the verifier, its salt and keys, and the
// pieces of them the SQL lexer might cut at a base64 + / or = and quote
// as a token.
func verifierSecrets(password, verifier string) []string {
	secrets := []string{password, verifier}
	// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
	_, rest, _ := strings.Cut(verifier, "$")
	_, rest, _ = strings.Cut(rest, ":")
	for _, part := range strings.FieldsFunc(rest, func(c rune) bool { return c == '$' || c == ':' }) {
		secrets = append(secrets, part)
		for _, piece := range strings.FieldsFunc(part, func(c rune) bool { return c == '+' || c == '/' || c == '=' }) {
			if len(piece) >= 4 {
				secrets = append(secrets, piece)
			}
		}
	}
	return secrets
}
