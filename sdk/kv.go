package sdk

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// GetOption qualifies a Get.
type GetOption func(*getOptions)

type getOptions struct{ revision int64 }

// AtRevision reads the version written at revision n (current or from
// history) instead of the current one.
func AtRevision(n int64) GetOption { return func(o *getOptions) { o.revision = n } }

// WriteOption qualifies a Put or Delete.
type WriteOption func(*writeOptions)

type writeOptions struct {
	ifRevision *int64
	force      bool
}

// IfRevision makes a write a compare-and-swap: it happens only if the
// path's current revision is n; 0 means the path must not exist. A lost
// race is an error matching ErrFailedPrecondition.
func IfRevision(n int64) WriteOption { return func(o *writeOptions) { o.ifRevision = &n } }

// Force overrides a guard. It lets Delete remove a path that replication
// rules copy elsewhere (without it such a delete is an error matching
// ErrFailedPrecondition that lists the copies; the copies then follow
// their rule's on-delete setting), and PutPolicy or DeletePolicy take
// admin on / away from the last policy that grants it.
func Force() WriteOption { return func(o *writeOptions) { o.force = true } }

// ListOption qualifies a List.
type ListOption func(*listOptions)

type listOptions struct{ recursive bool }

// Recursive lists every path below the prefix instead of only its direct
// children.
func Recursive() ListOption { return func(o *listOptions) { o.recursive = true } }

// Get returns the current entry at path, with its value. A missing path
// is an error matching ErrNotFound.
func (c *Client) Get(ctx context.Context, path string, opts ...GetOption) (*Entry, error) {
	var o getOptions
	for _, opt := range opts {
		opt(&o)
	}
	resp, err := c.kv.Get(ctx, &graftv1.GetRequest{Path: path, Revision: o.revision})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	return entryPtr(resp.GetEntry()), nil
}

// Put writes value at path and returns the new entry (without its value).
func (c *Client) Put(ctx context.Context, path string, value []byte, opts ...WriteOption) (*Entry, error) {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	resp, err := c.kv.Put(ctx, &graftv1.PutRequest{Path: path, Value: value, IfRevision: o.ifRevision})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	return entryPtr(resp.GetEntry()), nil
}

// PutTree writes values, by path relative to root, in one transaction:
// all commit at one revision, or none does, so no reader sees some without
// the others (a database user without its password). The caller needs
// write on every path; at most 16 values. It returns the entries written,
// by path, without values.
func (c *Client) PutTree(ctx context.Context, root string, values map[string][]byte) ([]Entry, error) {
	resp, err := c.kv.PutTree(ctx, &graftv1.PutTreeRequest{Path: root, Values: values})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	out := make([]Entry, 0, len(resp.GetEntries()))
	for _, e := range resp.GetEntries() {
		out = append(out, *entryPtr(e))
	}
	return out, nil
}

// Delete removes path, keeping its history, and returns the revision of
// the deletion. A missing path is an error matching ErrNotFound.
func (c *Client) Delete(ctx context.Context, path string, opts ...WriteOption) (int64, error) {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	resp, err := c.kv.Delete(ctx, &graftv1.DeleteRequest{Path: path, IfRevision: o.ifRevision, Force: o.force})
	if err != nil {
		return 0, wrap(ctx, err)
	}
	return resp.GetRevision(), nil
}

// List returns what lies under prefix ("/" is the whole tree), sorted by
// path, without values. Without Recursive only direct children are listed,
// deeper paths folded into directories.
func (c *Client) List(ctx context.Context, prefix string, opts ...ListOption) ([]ListItem, error) {
	var o listOptions
	for _, opt := range opts {
		opt(&o)
	}
	resp, err := c.kv.List(ctx, &graftv1.ListRequest{Prefix: prefix, Recursive: o.recursive})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	items := make([]ListItem, 0, len(resp.GetItems()))
	for _, it := range resp.GetItems() {
		items = append(items, ListItem{Path: it.GetPath(), Entry: entryPtr(it.GetEntry()), Directory: it.GetDirectory()})
	}
	return items, nil
}

// Tree is a consistent read of a subtree: every value at and below a path
// as of one store revision.
type Tree struct {
	Entries  []Entry // sorted by path
	Revision int64   // watch from Revision+1 to follow it
	// Unreadable are paths whose values exist but cannot be decrypted.
	Unreadable []string
}

// ReadTree reads every value at and below path at one revision: a snapshot
// to watch after. Paths the caller may not read are left out; a caller
// who may read nothing there gets an error matching ErrPermissionDenied.
func (c *Client) ReadTree(ctx context.Context, path string) (Tree, error) {
	resp, err := c.kv.ReadTree(ctx, &graftv1.ReadTreeRequest{Path: path})
	if err != nil {
		return Tree{}, wrap(ctx, err)
	}
	t := Tree{Revision: resp.GetRevision(), Unreadable: resp.GetUnreadable(), Entries: make([]Entry, 0, len(resp.GetEntries()))}
	for _, e := range resp.GetEntries() {
		t.Entries = append(t.Entries, entryFrom(e))
	}
	return t, nil
}

// History returns the retained versions of path, newest first, without
// values.
func (c *Client) History(ctx context.Context, path string) ([]HistoryItem, error) {
	resp, err := c.kv.History(ctx, &graftv1.HistoryRequest{Path: path})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	items := make([]HistoryItem, 0, len(resp.GetItems()))
	for _, it := range resp.GetItems() {
		item := HistoryItem{Entry: entryFrom(it.GetEntry()), Current: it.GetCurrent(), Deleted: it.GetDeleted(), Deletion: it.GetDeletion()}
		if t := it.GetEnded(); t != nil {
			item.Ended = t.AsTime()
		}
		items = append(items, item)
	}
	return items, nil
}

// Restore writes a new revision of path holding the value it had at
// revision, and returns the new entry (without its value; its Origin names
// the revision restored). History is never rewritten.
func (c *Client) Restore(ctx context.Context, path string, revision int64) (*Entry, error) {
	resp, err := c.kv.Restore(ctx, &graftv1.RestoreRequest{Path: path, Revision: revision})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	return entryPtr(resp.GetEntry()), nil
}

// RestorePrefix returns every path under prefix to its state at time at:
// changed paths get their old value back as a new revision and paths that
// did not exist then are deleted. With dryRun nothing changes and the
// steps are the plan. Only paths the caller may change are restored; the
// others it may see are counted in OutOfReach. A caller that may write
// nothing under prefix gets an error matching ErrPermissionDenied.
func (c *Client) RestorePrefix(ctx context.Context, prefix string, at time.Time, dryRun bool) (RestorePlan, error) {
	if at.IsZero() {
		// A zero time would mean "before anything existed": delete it all.
		return RestorePlan{}, invalidArgument(fmt.Sprintf("restore %s: a point in time is required", prefix))
	}
	resp, err := c.kv.RestorePrefix(ctx, &graftv1.RestorePrefixRequest{Prefix: prefix, At: timestamppb.New(at), DryRun: dryRun})
	if err != nil {
		return RestorePlan{}, wrap(ctx, err)
	}
	plan := RestorePlan{Steps: make([]RestoreStep, 0, len(resp.GetSteps())), OutOfReach: int(resp.GetOutOfReach())}
	for _, s := range resp.GetSteps() {
		plan.Steps = append(plan.Steps, RestoreStep{
			Path:         s.GetPath(),
			Action:       restoreActionFrom(s.GetAction()),
			FromRevision: s.GetFromRevision(),
			ToRevision:   s.GetToRevision(),
			NewRevision:  s.GetNewRevision(),
			Reason:       s.GetReason(),
		})
	}
	return plan, nil
}
