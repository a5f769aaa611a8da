package sdk

import (
	"time"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// Entry is one version of the value at a path.
type Entry struct {
	Path string
	// Value is nil where the server does not send values: the result of
	// Put and Restore, List and History items, and keys-only watches.
	Value    []byte
	Revision int64 // the store revision that wrote this version
	Author   string
	Time     time.Time
	Origin   *Origin // set when graft itself wrote the version (a restore, a replication)
	Size     int64   // size of the value in bytes, also where Value is omitted
}

// Origin records why graft itself wrote an entry.
type Origin struct {
	Kind           string // "restore", later "replication"
	RuleID         string // the replication rule, if any
	SourcePath     string // the path the value came from
	SourceRevision int64  // the revision of the source it came from
	// SourceTime is when that source version was committed, for a
	// replicated copy.
	SourceTime time.Time
}

// ListItem is one result of List: an entry, or in a non-recursive listing
// a directory that holds paths below it. A path can be both.
type ListItem struct {
	Path      string
	Entry     *Entry // nil for a pure directory; never carries a value
	Directory bool
}

// HistoryItem is one retained version of a path.
type HistoryItem struct {
	Entry   Entry     // without its value
	Current bool      // the version the path holds now
	Ended   time.Time // when it stopped being current; zero for the current one
	Deleted bool      // it ended because the path was deleted
	// Deletion marks the row of a deletion itself: its own revision,
	// time and author, no value. It comes just before (is newer than)
	// the version it ended.
	Deletion bool
}

// RestoreAction is what a prefix restore does to one path.
type RestoreAction int

// Restore actions.
const (
	RestoreActionUnspecified RestoreAction = iota
	RestoreActionRestore                   // the path gets back the value it had then
	RestoreActionDelete                    // the path did not exist then and is deleted
	RestoreActionSkip                      // its state then is unknown (history trimmed); left as it is
)

func (a RestoreAction) String() string {
	switch a {
	case RestoreActionRestore:
		return "restore"
	case RestoreActionDelete:
		return "delete"
	case RestoreActionSkip:
		return "skip"
	}
	return "unspecified"
}

// RestoreStep is what a prefix restore did, or would do, to one path.
type RestoreStep struct {
	Path         string
	Action       RestoreAction
	FromRevision int64  // the path's revision before the restore, 0 if absent
	ToRevision   int64  // the revision whose value is restored, 0 for a delete
	NewRevision  int64  // the revision written; 0 in a dry run or for a skip
	Reason       string // why a path was skipped
}

// RestorePlan is what a prefix restore did, or would do.
type RestorePlan struct {
	Steps []RestoreStep
	// OutOfReach counts the paths under the prefix the caller may see but
	// may not change: they are not in Steps and were left as they are.
	OutOfReach int
}

// EventType tells a write from a deletion.
type EventType int

// Event types.
const (
	EventUnspecified EventType = iota
	EventPut
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return "unspecified"
}

// Event is one change to one path. For a put, Entry is the new version
// (with its value unless the watch is keys-only); for a delete, Entry has
// the path, the revision of the deletion, and who deleted it when (Author,
// Time), as History has them.
type Event struct {
	Type  EventType
	Entry Entry
}

// SweepResult counts what a re-encryption sweep did.
type SweepResult struct {
	PrimaryKeyID uint32 // the key everything is now encrypted with
	Examined     int64  // stored records examined
	Reencrypted  int64  // records re-encrypted under the primary key
}

func entryFrom(p *graftv1.Entry) Entry {
	if p == nil {
		return Entry{}
	}
	e := Entry{
		Path:     p.GetPath(),
		Value:    p.GetValue(),
		Revision: p.GetRevision(),
		Author:   p.GetAuthor(),
		Size:     p.GetSize(),
	}
	if t := p.GetTime(); t != nil {
		e.Time = t.AsTime()
	}
	if o := p.GetOrigin(); o != nil {
		e.Origin = &Origin{Kind: o.GetKind(), RuleID: o.GetRuleId(), SourcePath: o.GetSourcePath(), SourceRevision: o.GetSourceRevision()}
		if t := o.GetSourceTime(); t != nil {
			e.Origin.SourceTime = t.AsTime()
		}
	}
	return e
}

func entryPtr(p *graftv1.Entry) *Entry {
	if p == nil {
		return nil
	}
	e := entryFrom(p)
	return &e
}

func restoreActionFrom(a graftv1.RestoreAction) RestoreAction {
	switch a {
	case graftv1.RestoreAction_RESTORE_ACTION_RESTORE:
		return RestoreActionRestore
	case graftv1.RestoreAction_RESTORE_ACTION_DELETE:
		return RestoreActionDelete
	case graftv1.RestoreAction_RESTORE_ACTION_SKIP:
		return RestoreActionSkip
	}
	return RestoreActionUnspecified
}

func eventTypeFrom(t graftv1.EventType) EventType {
	switch t {
	case graftv1.EventType_EVENT_TYPE_PUT:
		return EventPut
	case graftv1.EventType_EVENT_TYPE_DELETE:
		return EventDelete
	}
	return EventUnspecified
}
