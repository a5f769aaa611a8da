package store

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/keyring"
)

const sweepPage = 256

// SweepResult counts what a re-encryption sweep did.
type SweepResult struct {
	Examined    int64
	Reencrypted int64
}

// Reencrypt rewrites every stored value (current and history) that is not
// sealed with the keyring's primary key. A current value keeps its revision
// (pinned in the record) and watchers see no change. Each rewrite is guarded
// by the key's mod revision; a value written concurrently is already under
// the primary key and is left alone.
//
// etcd keeps the old ciphertexts in its own revision history until it
// compacts past the sweep, and a watch replaying from before then reads
// them: keep the old key in the ring until that compaction.
func (s *Store) Reencrypt(ctx context.Context) (SweepResult, error) {
	var res SweepResult
	for _, base := range []string{s.kvPrefix + "/", s.hist + "/"} {
		if err := s.sweepRange(ctx, base, &res); err != nil {
			return res, err
		}
	}
	return res, s.reencryptAuditKey(ctx, &res)
}

func (s *Store) sweepRange(ctx context.Context, base string, res *SweepResult) error {
	ring := s.keyring.Load()
	end := clientv3.GetPrefixRangeEnd(base)
	key := base
	for {
		resp, err := s.cli.Get(ctx, key, clientv3.WithRange(end), clientv3.WithLimit(sweepPage))
		if err != nil {
			return fmt.Errorf("re-encrypt: %w", err)
		}
		for _, kv := range resp.Kvs {
			res.Examined++
			r, err := decodeRecord(kv.Value)
			if err != nil {
				return fmt.Errorf("re-encrypt %s: %w", kv.Key, err)
			}
			if id, err := keyring.KeyID(r.Cipher); err == nil && id == ring.Primary() {
				continue
			}
			path := string(kv.Key[len(base)-1:])
			if base == s.hist+"/" {
				path, _, _ = s.parseHistKey(string(kv.Key))
			}
			plain, err := ring.Open(path, r.Cipher)
			if err != nil {
				return fmt.Errorf("re-encrypt: %w", err)
			}
			if r.Cipher, err = ring.Seal(path, plain); err != nil {
				return err
			}
			if base == s.kvPrefix+"/" {
				r.Rev = r.revision(kv.ModRevision)
			} else if r.EndRev == 0 {
				r.EndRev = kv.ModRevision // the rewrite moves the key's mod revision
			}
			txn, err := s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
				Then(clientv3.OpPut(string(kv.Key), r.encode())).
				Commit()
			if err != nil {
				return fmt.Errorf("re-encrypt %s: %w", path, err)
			}
			if txn.Succeeded {
				res.Reencrypted++
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
