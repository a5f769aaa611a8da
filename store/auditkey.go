package store

import (
	"context"
	"crypto/rand"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/keyring"
)

// auditKeyName is the additional data the audit key is sealed under; it is
// not a path in the tree, so no value can be moved onto it.
const auditKeyName = "graft:audit-hmac-key"

func (s *Store) auditKeyKey() string { return s.prefix + auditKeyBase }

// AuditKey returns the cluster's audit HMAC key, creating it on first use.
// It is stored encrypted like a value; every replica gets the same key, so
// HMACs of one value correlate across replicas.
func (s *Store) AuditKey(ctx context.Context) ([]byte, error) {
	key := s.auditKeyKey()
	for range 3 {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("audit key: %w", err)
		}
		if len(resp.Kvs) > 0 {
			plain, err := s.keyring.Load().Open(auditKeyName, resp.Kvs[0].Value)
			if err != nil {
				return nil, fmt.Errorf("audit key: %w", err)
			}
			return plain, nil
		}
		raw := make([]byte, 32)
		rand.Read(raw)
		sealed, err := s.keyring.Load().Seal(auditKeyName, raw)
		if err != nil {
			return nil, err
		}
		txn, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(sealed))).
			Commit()
		if err != nil {
			return nil, fmt.Errorf("audit key: %w", err)
		}
		if txn.Succeeded {
			return raw, nil
		}
		// Another replica created it first: read theirs.
	}
	return nil, fmt.Errorf("audit key: %w", ErrContention)
}

// reencryptAuditKey re-seals the audit key with the primary key.
func (s *Store) reencryptAuditKey(ctx context.Context, res *SweepResult) error {
	key := s.auditKeyKey()
	resp, err := s.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return err
	}
	kv := resp.Kvs[0]
	res.Examined++
	ring := s.keyring.Load()
	if id, err := keyring.KeyID(kv.Value); err == nil && id == ring.Primary() {
		return nil
	}
	plain, err := ring.Open(auditKeyName, kv.Value)
	if err != nil {
		return fmt.Errorf("re-encrypt audit key: %w", err)
	}
	sealed, err := ring.Seal(auditKeyName, plain)
	if err != nil {
		return err
	}
	txn, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
		Then(clientv3.OpPut(key, string(sealed))).
		Commit()
	if err != nil {
		return fmt.Errorf("re-encrypt audit key: %w", err)
	}
	if txn.Succeeded {
		res.Reencrypted++
	}
	return nil
}
