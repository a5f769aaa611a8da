package dbcred

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Dynamic is what a driver does for dynamic credentials: a new user for
// each lease, made from a role's statements, extended and dropped by
// them. Statements hold the placeholders {{name}}, {{password}} and
// {{expiration}} (Expand); the driver replaces them, and where the
// database takes a password's hash in their place (PostgreSQL's SCRAM
// verifier, MariaDB's native hash) the password itself never reaches the
// server. A driver's errors never hold a password or the admin DSN.
type Dynamic interface {
	// CreateUser runs statements for u in one transaction.
	CreateUser(ctx context.Context, statements []string, u NewUser) error
	// RenewUser runs statements (empty: the driver's DefaultRenewal) for
	// user, whose validity now ends at expiration.
	RenewUser(ctx context.Context, statements []string, user string, expiration time.Time) error
	// RevokeUser runs statements (empty: the driver's default, which ends
	// the user's sessions, hands what it owns to the admin, drops its
	// grants and drops it). A user that does not exist is revoked
	// already: RevokeUser then succeeds without running statements.
	RevokeUser(ctx context.Context, statements []string, user string) error
	// UserExists reports whether user exists.
	UserExists(ctx context.Context, user string) (bool, error)
	// MaxUsername is the longest user name the database takes, in bytes.
	MaxUsername() int
	// Close closes the admin connection.
	Close() error
}

// NewUser is a user CreateUser makes.
type NewUser struct {
	Name, Password string
	// Expiration is when the database should stop accepting the user
	// ({{expiration}}), where it can.
	Expiration time.Time
}

// The placeholders of a role's statements.
const (
	PlaceholderName       = "{{name}}"
	PlaceholderPassword   = "{{password}}"
	PlaceholderExpiration = "{{expiration}}"
)

// ExpirationLayout is how {{expiration}} is written: UTC, to the second,
// a form PostgreSQL's VALID UNTIL and MariaDB's timestamps take. The
// time is rounded up to the second (ExpirationText), so the database
// never refuses a user before its lease ends.
const ExpirationLayout = "2006-01-02 15:04:05+00"

// ExpirationText is t as {{expiration}} writes it: rounded up to the
// next whole second, in ExpirationLayout.
func ExpirationText(t time.Time) string {
	t = t.UTC()
	if r := t.Truncate(time.Second); r.Before(t) {
		t = r.Add(time.Second)
	}
	return t.Format(ExpirationLayout)
}

// Expand returns stmt with its placeholders replaced. name and password
// are drawn from alphabets without quotes or backslashes (Role.Validate
// and Username see to it), so a statement that quotes them stays one
// statement.
func Expand(stmt, name, password string, expiration time.Time) string {
	r := strings.NewReplacer(PlaceholderName, name, PlaceholderPassword, password, PlaceholderExpiration, ExpirationText(expiration))
	return r.Replace(stmt)
}

// CheckStatements refuses what no driver can run: an empty statement,
// {{password}} outside creation statements (password false: it would
// set an empty one), and {{expiration}} with no expiration (it would
// read year 1). what names the statements in the error.
func CheckStatements(what string, statements []string, expiration time.Time, password bool) error {
	for i, s := range statements {
		switch {
		case strings.TrimSpace(s) == "":
			return fmt.Errorf("%s[%d] is empty", what, i)
		case !password && strings.Contains(s, PlaceholderPassword):
			return fmt.Errorf("%s[%d] uses %s, which only creation_sql has", what, i, PlaceholderPassword)
		case expiration.IsZero() && strings.Contains(s, PlaceholderExpiration):
			return fmt.Errorf("%s[%d] uses %s, but there is no expiration", what, i, PlaceholderExpiration)
		}
	}
	return nil
}

// RoleKind marks a value as a dynamic-credential role: a role is a JSON
// value in its owner's tree, shared like any value.
const RoleKind = "graft.dbcred.role/v1"

// Role says how to make and drop the users of a dynamic credential.
type Role struct {
	Kind   string `json:"kind"` // RoleKind
	Driver string `json:"driver"`
	// Admin is the path below which key dsn holds the admin connection.
	Admin            string   `json:"admin"`
	CreationSQL      []string `json:"creation_sql"`
	RevocationSQL    []string `json:"revocation_sql,omitempty"`
	RenewSQL         []string `json:"renew_sql,omitempty"`
	DefaultTTL       Duration `json:"default_ttl"`
	MaxTTL           Duration `json:"max_ttl"`
	UsernameTemplate string   `json:"username_template,omitempty"`
	PasswordLength   int      `json:"password_length,omitempty"`
	PasswordAlphabet string   `json:"password_alphabet,omitempty"`
	MaxLeases        int      `json:"max_leases,omitempty"`
	// MaxLeasesPerPrincipal bounds one principal's live leases of the
	// role.
	MaxLeasesPerPrincipal int `json:"max_leases_per_principal,omitempty"`
}

// Duration is a time.Duration written as "1h30m" in JSON.
type Duration time.Duration

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"1h30m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Role defaults and bounds.
const (
	DefaultRoleTTL    = time.Hour
	DefaultRoleMaxTTL = 24 * time.Hour
	MinRoleTTL        = time.Second
	// MaxRoleMaxTTL keeps a forgotten lease from outliving a year.
	MaxRoleMaxTTL           = 365 * 24 * time.Hour
	DefaultUsernameTemplate = "v-{{principal}}-{{role}}-{{random}}-{{unix}}"
	maxStatements           = 64
	maxStatementBytes       = 16 << 10
)

// Driver names a role may use.
const (
	DriverPostgres = "postgres"
	DriverMySQL    = "mysql"
)

// ErrNotRole says a value is not a dynamic-credential role; ErrInvalidRole
// that a role breaks a rule.
var (
	ErrNotRole     = errors.New("not a dynamic-credential role")
	ErrInvalidRole = errors.New("invalid dynamic-credential role")
)

// ParseRole decodes and validates a role value.
func ParseRole(b []byte) (Role, error) {
	var r Role
	if err := json.Unmarshal(b, &r); err != nil || r.Kind != RoleKind {
		return Role{}, fmt.Errorf("%w: the value is not a role written by `graft dbcred role put`", ErrNotRole)
	}
	if err := r.Validate(); err != nil {
		return Role{}, err
	}
	return r, nil
}

// Encode returns the role as the value stored in the owner's tree, its
// defaults filled in.
func (r Role) Encode() ([]byte, error) {
	r.Kind = RoleKind
	r = r.withDefaults()
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(r, "", "  ")
}

func (r Role) withDefaults() Role {
	if r.DefaultTTL == 0 {
		r.DefaultTTL = Duration(DefaultRoleTTL)
	}
	if r.MaxTTL == 0 {
		r.MaxTTL = Duration(max(DefaultRoleMaxTTL, time.Duration(r.DefaultTTL)))
	}
	return r
}

// Validate reports every problem of the role at once.
func (r Role) Validate() error {
	r = r.withDefaults()
	var probs []string
	add := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	switch r.Driver {
	case DriverPostgres, DriverMySQL:
	case "":
		add("driver: want postgres or mysql")
	default:
		add("driver %q: want postgres or mysql", clip(r.Driver))
	}
	if r.Admin == "" {
		add("admin: want the path below which key dsn holds the admin connection")
	}
	if len(r.CreationSQL) == 0 {
		add("creation_sql: want the statements that create a user, with {{name}} and {{password}}")
	}
	joined := strings.Join(r.CreationSQL, "\n")
	if len(r.CreationSQL) > 0 && (!strings.Contains(joined, PlaceholderName) || !strings.Contains(joined, PlaceholderPassword)) {
		add("creation_sql: the statements must use {{name}} and {{password}}")
	}
	for _, set := range []struct {
		what  string
		stmts []string
	}{{"creation_sql", r.CreationSQL}, {"revocation_sql", r.RevocationSQL}, {"renew_sql", r.RenewSQL}} {
		what, stmts := set.what, set.stmts
		if len(stmts) > maxStatements {
			add("%s: %d statements, at most %d", what, len(stmts), maxStatements)
		}
		for i, s := range stmts {
			if strings.TrimSpace(s) == "" {
				add("%s[%d]: empty statement", what, i)
			}
			if len(s) > maxStatementBytes {
				add("%s[%d]: %d bytes, at most %d", what, i, len(s), maxStatementBytes)
			}
		}
	}
	ttl, maxTTL := time.Duration(r.DefaultTTL), time.Duration(r.MaxTTL)
	switch {
	case ttl < MinRoleTTL:
		add("default_ttl %s: want at least %s", ttl, MinRoleTTL)
	case maxTTL < ttl:
		add("max_ttl %s is shorter than default_ttl %s", maxTTL, ttl)
	case maxTTL > MaxRoleMaxTTL:
		add("max_ttl %s: want at most %s", maxTTL, MaxRoleMaxTTL)
	}
	if t := r.UsernameTemplate; t != "" {
		if !strings.Contains(t, "{{random}}") {
			add("username_template: must contain {{random}}, so that two users never collide")
		}
		rest := strings.NewReplacer("{{principal}}", "", "{{role}}", "", "{{random}}", "", "{{unix}}", "").Replace(t)
		for _, c := range rest {
			if !usernameChar(c) {
				add("username_template: %q: outside the placeholders use only a-z, 0-9, - and _", clip(t))
				break
			}
		}
	}
	if _, err := (Policy{Length: r.PasswordLength, Alphabet: r.PasswordAlphabet}).Password(); err != nil {
		add("%v", err)
	}
	if strings.ContainsAny(r.PasswordAlphabet, "'\"\\` \t\r\n;$") {
		add("password_alphabet: leave out quotes, backslashes, backticks, whitespace, ; and $, which the statements would have to escape")
	}
	if r.MaxLeases < 0 || r.MaxLeasesPerPrincipal < 0 {
		add("max_leases and max_leases_per_principal: want 0 (no limit) or more")
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidRole, strings.Join(probs, "; "))
	}
	return nil
}

// Password returns a new password under the role's policy.
func (r Role) Password() (string, error) {
	return Policy{Length: r.PasswordLength, Alphabet: r.PasswordAlphabet}.Password()
}

// TTLs returns the role's default and max TTL, defaults filled in.
func (r Role) TTLs() (ttl, maxTTL time.Duration) {
	r = r.withDefaults()
	return time.Duration(r.DefaultTTL), time.Duration(r.MaxTTL)
}

func usernameChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

// Username returns a new user name from the role's template for a lease
// of principal from role (the role's path), at most maxLen bytes. The
// principal and role are reduced to a-z, 0-9 and -; when the name is too
// long they are shortened, never the random part or the time, so two
// names never collide.
func (r Role) Username(principal, role string, now time.Time, maxLen int) string {
	tmpl := r.UsernameTemplate
	if tmpl == "" {
		tmpl = DefaultUsernameTemplate
	}
	random := strings.ToLower(rand.Text()[:8])
	unix := fmt.Sprint(now.Unix())
	principal = sanitize(strings.TrimPrefix(strings.TrimPrefix(principal, "app:"), "user:"))
	role = sanitize(role[strings.LastIndexByte(role, '/')+1:])
	build := func(p, ro string) string {
		return strings.NewReplacer("{{principal}}", p, "{{role}}", ro, "{{random}}", random, "{{unix}}", unix).Replace(tmpl)
	}
	name := build(principal, role)
	for len(name) > maxLen && (principal != "" || role != "") {
		// Shorten the longer of the two by what is over, at least one.
		over := len(name) - maxLen
		if len(principal) >= len(role) {
			principal = principal[:max(0, len(principal)-over)]
		} else {
			role = role[:max(0, len(role)-over)]
		}
		name = build(principal, role)
	}
	if len(name) > maxLen {
		// A custom template too long even without them: keep the end,
		// which holds the random part in the default.
		name = name[len(name)-maxLen:]
	}
	return name
}

func sanitize(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	for _, c := range s {
		if usernameChar(c) && c != '_' {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	return b.String()
}
