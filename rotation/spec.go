// Package rotation is blue/green credential rotation: a rotation's spec,
// the persisted state machine of its runs, and the Runner that drives one
// run step by step. graftd stores specs and states (rotation/registry)
// and checks every transition with Check; a graft-agent with the owner's
// identity (a rotator) claims rotations and runs them. This package links
// neither the server nor etcd, so the agent can use it.
//
// A run is: key (re-key the inactive user with a new random password,
// creating the group and users the first time) → test (log in with it) →
// publish (user and password at the target, one transaction) → rollout
// (every consumer agent reports the new revision healthy) → retire (after
// the grace, the old user can no longer log in and its sessions end) →
// done. A failed test, an unhealthy consumer or a rollout timeout rolls
// back: rollback-publish (the old credential again) → rollback-rollout
// (the consumers back on it) → rollback-disable (the new user can no
// longer log in) → failed.
package rotation

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/graft-sh/graft/dbcred"
)

// The drivers a spec may name.
const (
	DriverPostgres = dbcred.DriverPostgres
	DriverMySQL    = dbcred.DriverMySQL
)

// ExampleDSN is what an admin DSN for driver looks like, for the hints
// of errors and help texts.
func ExampleDSN(driver string) string {
	if driver == DriverMySQL {
		return "admin:...@tcp(db:3306)/?tls=true"
	}
	return "postgres://admin:...@db:5432/postgres?sslmode=verify-full"
}

// Defaults of a spec's durations.
const (
	DefaultRolloutTimeout = 10 * time.Minute
	DefaultRetireGrace    = 60 * time.Second
	DefaultStepTimeout    = 2 * time.Minute
	// MinEvery keeps a scheduled rotation from running without pause.
	MinEvery = time.Minute
)

// How long a rotator's claim on a rotation outlives the rotator, unless
// it asks for another TTL within the bounds: graftd (rotation/registry)
// refuses one outside them, and graft-agent takes its default and
// validates its rotation_claim_ttl by them.
const (
	DefaultClaimTTL = 15 * time.Second
	MinClaimTTL     = 2 * time.Second
	MaxClaimTTL     = 5 * time.Minute
)

// The keys a rotation writes below its target, and reads below its admin
// path.
const (
	KeyUser     = "user"
	KeyPassword = "password"
	KeyDSN      = "dsn"
)

// ErrInvalid says a spec, or a transition of a state, is not allowed.
var ErrInvalid = errors.New("invalid rotation")

// Spec says what a rotation rotates and how.
type Spec struct {
	Name             string        `json:"name"`
	Driver           string        `json:"driver"`
	Admin            string        `json:"admin"`
	Target           string        `json:"target"`
	Users            []string      `json:"users"`
	Group            string        `json:"group"`
	Consumers        []string      `json:"consumers"`
	RolloutTimeout   time.Duration `json:"rolloutTimeout"`
	RetireGrace      time.Duration `json:"retireGrace"`
	Every            time.Duration `json:"every,omitempty"`
	StepTimeout      time.Duration `json:"stepTimeout"`
	PasswordLength   int           `json:"passwordLength,omitempty"`
	PasswordAlphabet string        `json:"passwordAlphabet,omitempty"`
	Creator          string        `json:"creator"`
	Created          time.Time     `json:"created"`
}

var (
	validRotationName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// validDBName is what both drivers take as a user or group name
	// without quoting trouble, at PostgreSQL's length limit.
	validDBName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,63}$`)
	validApp    = regexp.MustCompile(`^app:[A-Za-z0-9._-]+$`)
)

// CheckName refuses a rotation name that is not 1 to 63 of a-z, 0-9 and
// -, starting and ending with a letter or digit.
func CheckName(name string) error {
	if !validRotationName.MatchString(name) {
		return fmt.Errorf("%w: name %q: want 1 to 63 of a-z, 0-9 and -, starting and ending with a letter or digit", ErrInvalid, name)
	}
	return nil
}

// Normalize fills in the defaults: the timeouts (the retire grace may be
// zero; SpecFromProto gives an absent one its default), and the group as the
// users' common prefix without its trailing - or _ (message-processor for
// message-processor-blue and message-processor-green).
func (s *Spec) Normalize() {
	if s.RolloutTimeout == 0 {
		s.RolloutTimeout = DefaultRolloutTimeout
	}
	if s.StepTimeout == 0 {
		s.StepTimeout = DefaultStepTimeout
	}
	if s.Group == "" && len(s.Users) == 2 {
		s.Group = strings.TrimRight(commonPrefix(s.Users[0], s.Users[1]), "-_.")
	}
	s.Consumers = slices.Compact(slices.Sorted(slices.Values(s.Consumers)))
}

func commonPrefix(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return a[:n]
}

// Validate reports every problem of a normalized spec at once. checkPath
// checks a path's canonical form (the store's rules, which this package
// does not link).
func (s Spec) Validate(checkPath func(string) error) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if err := CheckName(s.Name); err != nil {
		errs = append(errs, err)
	}
	if s.Driver != DriverPostgres && s.Driver != DriverMySQL {
		add("driver %q: want %s or %s (MariaDB)", s.Driver, DriverPostgres, DriverMySQL)
	}
	for _, p := range []struct{ flag, path string }{{"admin", s.Admin}, {"target", s.Target}} {
		if p.path == "" {
			add("%s: missing: want the path in the owner's tree", p.flag)
		} else if err := checkPath(p.path); err != nil {
			add("%s %s: %v", p.flag, p.path, err)
		}
	}
	if s.Admin != "" && s.Admin == s.Target {
		add("admin and target are both %s: the admin DSN must not sit where the credential is published (and shared)", s.Admin)
	} else if s.Admin != "" && s.Target != "" && (under(s.Admin, s.Target) || under(s.Target, s.Admin)) {
		add("admin %s and target %s overlap: keep the admin DSN out of the tree that is published and shared", s.Admin, s.Target)
	}
	if len(s.Users) != 2 {
		add("users: %d given: want two users that alternate, such as app-blue,app-green", len(s.Users))
	} else if s.Users[0] == s.Users[1] {
		add("users: %s twice: want two different users", s.Users[0])
	}
	for _, u := range append(slices.Clone(s.Users), s.Group) {
		if !validDBName.MatchString(u) {
			add("user or group %q: want 1 to 63 of A-Z, a-z, 0-9, _, . and -", u)
		}
	}
	if s.Group == "" {
		add("group: the users share no prefix to name it after: set --group")
	} else if slices.Contains(s.Users, s.Group) {
		add("group %s is also one of the users: the group must be a role of its own", s.Group)
	}
	if len(s.Consumers) == 0 {
		add("consumers: none given: want the applications that use the credential, such as app:message-processor, so that the old user is retired only once they run the new one")
	}
	for _, c := range s.Consumers {
		if !validApp.MatchString(c) {
			add("consumer %q: want app:<name>", c)
		}
	}
	if s.RolloutTimeout < time.Second || s.StepTimeout < time.Second {
		add("rollout-timeout %s, step-timeout %s: want at least 1s each", s.RolloutTimeout, s.StepTimeout)
	}
	if s.RetireGrace < 0 {
		add("retire-grace %s: want zero or more", s.RetireGrace)
	}
	if s.Every != 0 && s.Every < MinEvery {
		add("every %s: want 0 (only when asked) or at least %s", s.Every, MinEvery)
	}
	if _, err := s.Policy().Password(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w %s: %w", ErrInvalid, s.Name, errors.Join(errs...))
	}
	return nil
}

// under reports whether path is prefix or below it, segment-aware.
func under(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, strings.TrimSuffix(prefix, "/")+"/")
}

// Overlaps reports why s and o may not both exist: the same target, one
// target inside the other, or a user of one in the other on the same
// database (admin path).
func (s Spec) Overlaps(o Spec) error {
	if under(s.Target, o.Target) || under(o.Target, s.Target) {
		return fmt.Errorf("%w: target %s overlaps the target %s of rotation %s: two rotations of one credential would not alternate", ErrInvalid, s.Target, o.Target, o.Name)
	}
	if s.Admin == o.Admin {
		for _, u := range s.Users {
			if slices.Contains(o.Users, u) || u == o.Group {
				return fmt.Errorf("%w: user %s is already rotated by rotation %s on the same database", ErrInvalid, u, o.Name)
			}
		}
	}
	return nil
}

// Policy is the password policy of new passwords.
func (s Spec) Policy() dbcred.Policy {
	return dbcred.Policy{Length: s.PasswordLength, Alphabet: s.PasswordAlphabet}
}

// Other returns the user of the pair that is not user.
func (s Spec) Other(user string) string {
	if len(s.Users) != 2 {
		return ""
	}
	if user == s.Users[0] {
		return s.Users[1]
	}
	return s.Users[0]
}

// ConsumerApps returns the consumers' application names.
func (s Spec) ConsumerApps() []string {
	out := make([]string, 0, len(s.Consumers))
	for _, c := range s.Consumers {
		out = append(out, strings.TrimPrefix(c, "app:"))
	}
	return out
}
