package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/store"
)

// Get implements graftv1.KVServiceServer.
func (s *Server) Get(ctx context.Context, req *graftv1.GetRequest) (*graftv1.GetResponse, error) {
	var (
		e   store.Entry
		err error
	)
	if req.GetRevision() != 0 {
		e, err = s.store.GetRevision(ctx, req.GetPath(), req.GetRevision())
	} else {
		e, err = s.store.Get(ctx, req.GetPath())
		if errors.Is(err, store.ErrNotFound) {
			err = s.notFoundHint(ctx, req.GetPath(), err)
		}
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.GetResponse{Entry: entryProto(e)}, nil
}

// notFoundHint adds the next step to a get of a missing key: the listing
// of the path itself when keys lie below it (it is a prefix), else of its
// parent; each only if the caller may list it, so it reveals nothing.
func (s *Server) notFoundHint(ctx context.Context, p string, err error) error {
	if s.may(ctx, acl.ActionList, p) {
		below, lerr := s.store.HasBelow(ctx, p)
		if lerr == nil && below {
			return fmt.Errorf("%w: %s is a prefix with keys below it; list them with `graft ls %s`", err, p, p)
		}
	}
	parent := path.Dir(p)
	if s.may(ctx, acl.ActionList, parent) {
		return fmt.Errorf("%w (see `graft ls %s`)", err, parent)
	}
	return err
}

// Put implements graftv1.KVServiceServer.
func (s *Server) Put(ctx context.Context, req *graftv1.PutRequest) (*graftv1.PutResponse, error) {
	e, err := s.store.Put(ctx, req.GetPath(), req.GetValue(), store.WriteOptions{
		Author:     principal(ctx).Name,
		IfRevision: req.IfRevision,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.PutResponse{Entry: entryProto(e)}, nil
}

// PutTree implements graftv1.KVServiceServer: all values or none, and
// only if the caller may write every one of them.
func (s *Server) PutTree(ctx context.Context, req *graftv1.PutTreeRequest) (*graftv1.PutTreeResponse, error) {
	p := principal(ctx)
	root := strings.TrimSuffix(req.GetPath(), "/")
	for _, k := range slices.Sorted(maps.Keys(req.GetValues())) {
		full := root + "/" + k
		if _, err := store.ParsePath(full); err != nil {
			return nil, toStatus(fmt.Errorf("put %s: key %q: %w", root, k, err))
		}
		if err := s.access.Decide(p, acl.ActionWrite, full).Err(p, acl.ActionWrite, full); err != nil {
			return nil, toStatus(err)
		}
	}
	entries, err := s.store.PutTree(ctx, req.GetPath(), req.GetValues(), store.WriteOptions{Author: p.Name})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.PutTreeResponse{Entries: make([]*graftv1.Entry, len(entries))}
	for i, e := range entries {
		resp.Entries[i] = entryProto(e)
	}
	return resp, nil
}

// Delete implements graftv1.KVServiceServer.
func (s *Server) Delete(ctx context.Context, req *graftv1.DeleteRequest) (*graftv1.DeleteResponse, error) {
	if !req.GetForce() {
		if err := s.replication.CheckDelete(req.GetPath()); err != nil {
			return nil, toStatus(err)
		}
	}
	rev, err := s.store.Delete(ctx, req.GetPath(), store.WriteOptions{
		Author:     principal(ctx).Name,
		IfRevision: req.IfRevision,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.DeleteResponse{Revision: rev}, nil
}

// List implements graftv1.KVServiceServer.
func (s *Server) List(ctx context.Context, req *graftv1.ListRequest) (*graftv1.ListResponse, error) {
	// Read only the subtrees the caller may list in.
	roots := s.access.Reachable(principal(ctx), acl.ActionList, req.GetPrefix())
	items, rev, err := s.store.ListTrees(ctx, req.GetPrefix(), roots, req.GetRecursive(), func(path string) bool {
		return s.may(ctx, acl.ActionList, path)
	})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.ListResponse{Revision: rev, Items: make([]*graftv1.ListItem, 0, len(items))}
	for _, it := range items {
		item := &graftv1.ListItem{Path: it.Path, Directory: it.Directory}
		if it.Entry != nil {
			item.Entry = entryProto(*it.Entry)
		}
		resp.Items = append(resp.Items, item)
	}
	return resp, nil
}

// ReadTree implements graftv1.KVServiceServer. The guard has refused a
// caller who may read nothing at or below the path; the rest is filtered
// path by path.
func (s *Server) ReadTree(ctx context.Context, req *graftv1.ReadTreeRequest) (*graftv1.ReadTreeResponse, error) {
	// Read, and decrypt, only the subtrees the caller may read in: an
	// app reading /app reads /app/<its name>, not every app's values.
	roots := s.access.Reachable(principal(ctx), acl.ActionRead, req.GetPath())
	entries, rev, err := s.store.ReadTrees(ctx, req.GetPath(), roots)
	var unreadable *store.UnreadableError
	if err != nil && !errors.As(err, &unreadable) {
		return nil, toStatus(err)
	}
	resp := &graftv1.ReadTreeResponse{Revision: rev, Entries: make([]*graftv1.Entry, 0, len(entries))}
	for _, e := range entries {
		if s.may(ctx, acl.ActionRead, e.Path) {
			resp.Entries = append(resp.Entries, entryProto(e))
		}
	}
	if unreadable != nil {
		for _, p := range unreadable.Paths {
			if s.may(ctx, acl.ActionRead, p) {
				resp.Unreadable = append(resp.Unreadable, p)
			}
		}
	}
	return resp, nil
}

// History implements graftv1.KVServiceServer.
func (s *Server) History(ctx context.Context, req *graftv1.HistoryRequest) (*graftv1.HistoryResponse, error) {
	items, err := s.store.History(ctx, req.GetPath())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.HistoryResponse{Items: make([]*graftv1.HistoryItem, 0, len(items))}
	for _, it := range items {
		if it.Deleted && it.DeletedAt != 0 {
			// Every change has its own row, the deletion too: at its own
			// revision, by its author, newer than the version it ended.
			del := &graftv1.HistoryItem{Entry: &graftv1.Entry{Path: it.Entry.Path, Revision: it.DeletedAt, Author: it.Deleter}, Deletion: true}
			if !it.Ended.IsZero() {
				del.Entry.Time = timestamppb.New(it.Ended)
			}
			resp.Items = append(resp.Items, del)
		}
		h := &graftv1.HistoryItem{Entry: entryProto(it.Entry), Current: it.Current, Deleted: it.Deleted}
		if !it.Ended.IsZero() {
			h.Ended = timestamppb.New(it.Ended)
		}
		resp.Items = append(resp.Items, h)
	}
	return resp, nil
}

// Restore implements graftv1.KVServiceServer.
func (s *Server) Restore(ctx context.Context, req *graftv1.RestoreRequest) (*graftv1.RestoreResponse, error) {
	if req.GetRevision() <= 0 {
		return nil, toStatus(invalid("restore %s: give the revision to restore (see `graft history %s`)", req.GetPath(), req.GetPath()))
	}
	e, err := s.store.Restore(ctx, req.GetPath(), req.GetRevision(), principal(ctx).Name)
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.RestoreResponse{Entry: entryProto(e)}, nil
}

// RestorePrefix implements graftv1.KVServiceServer.
func (s *Server) RestorePrefix(ctx context.Context, req *graftv1.RestorePrefixRequest) (*graftv1.RestorePrefixResponse, error) {
	if req.GetAt() == nil {
		return nil, toStatus(invalid("restore %s: give the point in time to restore to", req.GetPrefix()))
	}
	if err := req.GetAt().CheckValid(); err != nil {
		return nil, toStatus(invalid("restore %s: bad time: %v", req.GetPrefix(), err))
	}
	// Plan over the paths the caller may see; keep the steps it may take
	// (write to restore, delete to delete) and count the others, which
	// stay as they are. Paths it may not see are neither named nor
	// counted nor touched.
	// Only the subtrees it may list are planned at all.
	visible := func(path string) bool { return s.may(ctx, acl.ActionList, path) }
	at, author := req.GetAt().AsTime(), principal(ctx).Name
	roots := s.access.Reachable(principal(ctx), acl.ActionList, req.GetPrefix())
	var plan []store.RestoreStep
	for _, root := range roots {
		p, err := s.store.RestorePrefixFunc(ctx, root, at, true, author, visible)
		if err != nil {
			return nil, toStatus(err)
		}
		plan = append(plan, p...)
	}
	slices.SortFunc(plan, func(a, b store.RestoreStep) int { return strings.Compare(a.Path, b.Path) })
	allowed := map[string]bool{}
	steps := plan[:0:0]
	outOfReach := 0
	for _, st := range plan {
		act := acl.ActionWrite
		if st.Action == store.ActionDelete {
			act = acl.ActionDelete
		}
		if st.Action != store.ActionSkip && !s.may(ctx, act, st.Path) {
			outOfReach++
			continue
		}
		allowed[st.Path] = true
		steps = append(steps, st)
	}
	if !req.GetDryRun() && len(steps) > 0 {
		done := steps[:0:0]
		for _, root := range roots {
			d, err := s.store.RestorePrefixFunc(ctx, root, at, false, author, func(path string) bool { return allowed[path] })
			done = append(done, d...)
			if err != nil {
				return nil, toStatus(err)
			}
		}
		steps = done
	}
	resp := &graftv1.RestorePrefixResponse{DryRun: req.GetDryRun(), Steps: make([]*graftv1.RestoreStep, 0, len(steps)), OutOfReach: int64(outOfReach)}
	for _, st := range steps {
		resp.Steps = append(resp.Steps, &graftv1.RestoreStep{
			Path:         st.Path,
			Action:       restoreActionProto(st.Action),
			FromRevision: st.FromRevision,
			ToRevision:   st.ToRevision,
			NewRevision:  st.NewRevision,
			Reason:       st.Reason,
		})
	}
	return resp, nil
}

// Watch implements graftv1.KVServiceServer.
func (s *Server) Watch(req *graftv1.WatchRequest, stream graftv1.KVService_WatchServer) error {
	a, err := accessOf(graftv1.KVService_Watch_FullMethodName, req)
	if err == nil {
		err = a.checkPath()
	}
	if err != nil {
		return toStatus(err)
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	// Watch only what the caller may list: one subtree of the prefix (an
	// app watching / watches /app/<name>) when that is all it reaches,
	// and decrypt only values it may read.
	p := principal(ctx)
	watched := req.GetPrefix()
	if roots := s.access.Reachable(p, acl.ActionList, watched); len(roots) == 1 {
		watched = roots[0]
	}
	readable := func(path string) bool { return s.access.Decide(p, acl.ActionRead, path).Allowed }
	after, batches, err := s.watches.Watch(ctx, watched, req.GetStartRevision(), req.GetKeysOnly(), readable)
	s.audit.AppendAsync(s.record(ctx, "Watch", a, "ok", err))
	if err != nil {
		return toStatus(err)
	}
	if err := stream.Send(&graftv1.WatchResponse{Created: true, Revision: after}); err != nil {
		return err
	}
	reached := after
	for {
		select {
		case <-s.stopping:
			return toStatus(unavailable("watch %s: graftd is shutting down; reconnect and resume from revision %d", req.GetPrefix(), reached+1))
		case b, ok := <-batches:
			if !ok {
				return toStatus(ctx.Err())
			}
			if b.Err != nil {
				return toStatus(b.Err)
			}
			resp := &graftv1.WatchResponse{Revision: b.Revision, Events: make([]*graftv1.Event, 0, len(b.Events))}
			for _, ev := range b.Events {
				// A caller sees the changes of paths it may list, with
				// values only where it may read them.
				if !s.access.Decide(p, acl.ActionList, ev.Entry.Path).Allowed {
					continue
				}
				if ev.Entry.Value != nil && !s.access.Decide(p, acl.ActionRead, ev.Entry.Path).Allowed {
					ev.Entry.Value = nil
				}
				resp.Events = append(resp.Events, &graftv1.Event{Type: eventTypeProto(ev.Type), Entry: entryProto(ev.Entry)})
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			reached = b.Revision
		}
	}
}

func entryProto(e store.Entry) *graftv1.Entry {
	out := &graftv1.Entry{
		Path:     e.Path,
		Value:    e.Value,
		Revision: e.Revision,
		Author:   e.Author,
		Size:     int64(e.Size),
	}
	if !e.Time.IsZero() {
		out.Time = timestamppb.New(e.Time)
	}
	if o := e.Origin; o != nil {
		out.Origin = &graftv1.Origin{Kind: o.Kind, RuleId: o.RuleID, SourcePath: o.SourcePath, SourceRevision: o.SourceRevision}
		if o.SourceTime > 0 {
			out.Origin.SourceTime = timestamppb.New(time.Unix(0, o.SourceTime))
		}
	}
	return out
}

func eventTypeProto(t store.EventType) graftv1.EventType {
	if t == store.EventDelete {
		return graftv1.EventType_EVENT_TYPE_DELETE
	}
	return graftv1.EventType_EVENT_TYPE_PUT
}

func restoreActionProto(a store.RestoreAction) graftv1.RestoreAction {
	switch a {
	case store.ActionRestore:
		return graftv1.RestoreAction_RESTORE_ACTION_RESTORE
	case store.ActionDelete:
		return graftv1.RestoreAction_RESTORE_ACTION_DELETE
	case store.ActionSkip:
		return graftv1.RestoreAction_RESTORE_ACTION_SKIP
	}
	return graftv1.RestoreAction_RESTORE_ACTION_UNSPECIFIED
}
