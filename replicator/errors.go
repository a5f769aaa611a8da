package replicator

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. A *RuleError matches ErrInvalidRule when the rule
// itself is malformed and ErrRuleConflict when it conflicts with existing
// rules; a *SourceInUseError matches ErrSourceInUse; an *IncompleteError
// matches ErrIncomplete.
var (
	ErrInvalidRule  = errors.New("invalid replication rule")
	ErrRuleConflict = errors.New("replication rule conflict")
	ErrSourceInUse  = errors.New("source is replicated")
	ErrIncomplete   = errors.New("done in part")
)

// RuleError says why a rule was refused.
type RuleError struct {
	// Rule is the conflicting existing rule, if any.
	Rule string
	Msg  string
	// Others are the paths of other rules that Msg names (their source
	// and destination, or a cycle's paths), so that a caller who may not
	// list them can be told less.
	Others   []string
	conflict bool
}

func (e *RuleError) Error() string { return e.Msg }

// Is matches ErrInvalidRule or ErrRuleConflict.
func (e *RuleError) Is(target error) bool {
	return (target == ErrRuleConflict && e.conflict) || (target == ErrInvalidRule && !e.conflict)
}

// SourceInUseError names the copies that deleting a source would affect.
type SourceInUseError struct {
	Path   string
	Copies []string // "<destination> (rule <id>)"
}

func (e *SourceInUseError) Error() string {
	return fmt.Sprintf("delete %s: it is replicated to %s; repeat with --force to delete it anyway (its copies follow their rule's on-delete setting), or `graft unshare` first",
		e.Path, strings.Join(e.Copies, ", "))
}

func (e *SourceInUseError) Unwrap() error { return ErrSourceInUse }

// IncompleteError is a share or unshare whose rule change stands but
// whose follow-up (filling or pruning destinations) failed. Msg says what
// happened and what to do.
type IncompleteError struct {
	Msg string
	Err error
}

func (e *IncompleteError) Error() string { return e.Msg }

// Is matches ErrIncomplete; Unwrap gives the cause.
func (e *IncompleteError) Is(target error) bool { return target == ErrIncomplete }
func (e *IncompleteError) Unwrap() error        { return e.Err }
