package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// PolicyRecord is one role's access policy as stored: its YAML source and
// who wrote it. The acl package parses and enforces it.
type PolicyRecord struct {
	Role    string    `json:"role"`
	YAML    string    `json:"yaml"`
	Author  string    `json:"author"`
	Updated time.Time `json:"updated"`
}

func (s *Store) policyPrefix() string { return s.prefix + string(SpacePolicies) }

// PutPolicy creates or replaces a role's policy.
func (s *Store) PutPolicy(ctx context.Context, rec PolicyRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, s.policyPrefix()+rec.Role, string(data)); err != nil {
		return fmt.Errorf("put policy %s: %w", rec.Role, err)
	}
	return nil
}

// PutPolicyIfAbsent stores rec only if the role has no policy yet and
// reports whether it did.
func (s *Store) PutPolicyIfAbsent(ctx context.Context, rec PolicyRecord) (bool, error) {
	data, err := json.Marshal(rec)
	if err != nil {
		return false, err
	}
	key := s.policyPrefix() + rec.Role
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(data))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("put policy %s: %w", rec.Role, err)
	}
	return resp.Succeeded, nil
}

// GetPolicy returns a role's policy, or ErrNotFound.
func (s *Store) GetPolicy(ctx context.Context, role string) (PolicyRecord, error) {
	resp, err := s.cli.Get(ctx, s.policyPrefix()+role)
	if err != nil {
		return PolicyRecord{}, fmt.Errorf("get policy %s: %w", role, err)
	}
	if len(resp.Kvs) == 0 {
		return PolicyRecord{}, fmt.Errorf("get policy %s: %w", role, ErrNotFound)
	}
	var rec PolicyRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return PolicyRecord{}, fmt.Errorf("get policy %s: %w", role, err)
	}
	return rec, nil
}

// ListPolicies returns every policy sorted by role, and the revision read at.
func (s *Store) ListPolicies(ctx context.Context) ([]PolicyRecord, int64, error) {
	resp, err := s.cli.Get(ctx, s.policyPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list policies: %w", err)
	}
	out := make([]PolicyRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rec PolicyRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, 0, fmt.Errorf("list policies: decode %s: %w", kv.Key, err)
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b PolicyRecord) int { return strings.Compare(a.Role, b.Role) })
	return out, resp.Header.Revision, nil
}

// DeletePolicy removes a role's policy, or returns ErrNotFound.
func (s *Store) DeletePolicy(ctx context.Context, role string) error {
	resp, err := s.cli.Delete(ctx, s.policyPrefix()+role)
	if err != nil {
		return fmt.Errorf("delete policy %s: %w", role, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("delete policy %s: %w", role, ErrNotFound)
	}
	return nil
}

// WatchPolicies signals on the returned channel whenever any policy changes
// after revision after; the receiver lists them again. Bursts coalesce. The
// channel closes when ctx ends or the watch fails.
func (s *Store) WatchPolicies(ctx context.Context, after int64) <-chan struct{} {
	return s.watchSignal(ctx, s.policyPrefix(), after)
}

// watchSignal signals whenever a key under prefix changes after revision
// after, coalescing bursts, until ctx ends or the watch fails.
func (s *Store) watchSignal(ctx context.Context, prefix string, after int64) <-chan struct{} {
	out := make(chan struct{}, 1)
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(after+1))
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			if len(resp.Events) == 0 {
				continue
			}
			select {
			case out <- struct{}{}:
			default: // a signal is already pending
			}
		}
	}()
	return out
}
