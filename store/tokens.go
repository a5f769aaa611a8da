package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TokenRecord is what graft keeps of a token: never the token itself, only
// its SHA-256 hash (hex) and what it stands for.
type TokenRecord struct {
	Hash string `json:"hash"`
	// Accessor is a non-secret id for listing and revoking the token.
	Accessor  string    `json:"accessor,omitempty"`
	Principal string    `json:"principal"`
	Roles     []string  `json:"roles,omitempty"`
	Created   time.Time `json:"created"`
	Creator   string    `json:"creator,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
}

// TokenChange is one change to the token records: a record added or
// replaced, or (Deleted) the record with Hash removed.
type TokenChange struct {
	Record  TokenRecord
	Deleted bool
	// Revision is the store revision of the change.
	Revision int64
}

func (s *Store) tokenKey(hash string) string { return s.spaceKey(SpaceTokens, hash) }

// PutToken stores a token record.
func (s *Store) PutToken(ctx context.Context, rec TokenRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, s.tokenKey(rec.Hash), string(data)); err != nil {
		return fmt.Errorf("store token for %s: %w", rec.Principal, err)
	}
	return nil
}

// ReplacePrincipalTokens atomically removes every token of principal and
// stores rec in their place. Dev mode uses it so that the root token of the
// current run is the only one.
func (s *Store) ReplacePrincipalTokens(ctx context.Context, principal string, rec TokenRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	prefix := s.prefix + "tokens/"
	for attempt := range maxWriteAttempts {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return fmt.Errorf("replace tokens of %s: %w", principal, err)
			}
		}
		recs, rev, err := s.ListTokens(ctx)
		if err != nil {
			return err
		}
		ops := []clientv3.Op{clientv3.OpPut(s.tokenKey(rec.Hash), string(data))}
		for _, r := range recs {
			if r.Principal == principal && r.Hash != rec.Hash {
				ops = append(ops, clientv3.OpDelete(s.tokenKey(r.Hash)))
			}
		}
		// Commit only if no token was stored since the list; otherwise one
		// of principal's could be left beside rec.
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(prefix), "<", rev+1).WithPrefix()).
			Then(ops...).
			Commit()
		if err != nil {
			return fmt.Errorf("replace tokens of %s: %w", principal, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("replace tokens of %s: %w; retry", principal, ErrContention)
}

// ListTokens returns every token record and the revision read at.
func (s *Store) ListTokens(ctx context.Context) ([]TokenRecord, int64, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"tokens/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list tokens: %w", err)
	}
	out := make([]TokenRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r TokenRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, 0, fmt.Errorf("list tokens: decode %s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	return out, resp.Header.Revision, nil
}

// WatchTokens streams token changes after revision after. The channel
// closes when ctx ends or the watch fails; the caller then lists again.
func (s *Store) WatchTokens(ctx context.Context, after int64) <-chan TokenChange {
	out := make(chan TokenChange)
	prefix := s.prefix + "tokens/"
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(after+1))
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			for _, ev := range resp.Events {
				c := TokenChange{Revision: ev.Kv.ModRevision}
				if ev.Type == mvccpb.DELETE {
					c.Record, c.Deleted = TokenRecord{Hash: strings.TrimPrefix(string(ev.Kv.Key), prefix)}, true
				} else if err := json.Unmarshal(ev.Kv.Value, &c.Record); err != nil {
					s.log.Warn("skipping undecodable token record", "key", string(ev.Kv.Key), "err", err)
					continue
				}
				select {
				case out <- c:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// DeleteToken removes the token record with the given hash, or returns
// ErrNotFound.
func (s *Store) DeleteToken(ctx context.Context, hash string) error {
	resp, err := s.cli.Delete(ctx, s.tokenKey(hash))
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("revoke token: %w", ErrNotFound)
	}
	return nil
}
