package registry_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/keyring"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/rotation/registry"
	"github.com/graft-sh/graft/store"
)

// A run in progress across a key rotation: its passwords, sealed with the
// old key, are sealed again by Reseal (the re-encryption sweep's part), so
// the rotator still reads them once the old key has left the ring;
// without Reseal it could not. A record already under the primary key is
// left alone.
func TestResealAcrossAKeyRotation(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()
	key1, key2 := testenv.RandomKey(), testenv.RandomKey()
	ring := func(primary uint32, keys map[uint32][]byte) *keyring.Keyring {
		t.Helper()
		k, err := keyring.New(primary, keys)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	s, err := store.New(store.Config{Client: env.Client, Keyring: ring(1, map[uint32][]byte{1: key1}), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	reg := registry.New(s)
	const name, holder = "mp-pg", "rotator-1"
	if _, err := reg.Create(ctx, rotation.Spec{Name: name, Driver: rotation.DriverPostgres, Admin: "/dba/admin/postgres",
		Target: "/dba/services/mp/postgres", Users: []string{"mp-blue", "mp-green"}, Consumers: []string{"app:mp"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Run(ctx, name, "user:dora"); err != nil {
		t.Fatal(err)
	}
	claim := func() (registry.Claimed, error) {
		return reg.Claim(ctx, name, holder, "user:dora", 10*time.Second)
	}
	cl, err := claim()
	if err != nil || !cl.Held {
		t.Fatalf("claim: %+v, %v", cl, err)
	}
	next := cl.Rotation.State
	next.Run, next.Phase, next.NewUser, next.RunStarted = next.Run+1, rotation.PhaseRunning, "mp-blue", time.Now().UTC()
	next.Steps = []rotation.Step{{Name: rotation.StepKey, Started: time.Now().UTC()}}
	const password = "n3w-pw"
	if _, err := reg.Advance(ctx, name, holder, "user:dora", next, &rotation.Secrets{NewPassword: password}); err != nil {
		t.Fatal(err)
	}

	// Nothing to do while the only key is the primary.
	if ex, re, err := reg.Reseal(ctx); err != nil || ex != 1 || re != 0 {
		t.Fatalf("Reseal under the sealing key = %d examined, %d resealed, %v; want 1, 0", ex, re, err)
	}

	// Key 2 becomes the primary; without a sweep, retiring key 1 would
	// lose the run's passwords.
	s.SetKeyring(ring(2, map[uint32][]byte{2: key2}))
	if _, err := claim(); !errors.Is(err, keyring.ErrDecrypt) {
		t.Fatalf("claim with the sealing key gone and no sweep: %v, want %v", err, keyring.ErrDecrypt)
	}
	s.SetKeyring(ring(2, map[uint32][]byte{1: key1, 2: key2}))
	before, err := reg.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if ex, re, err := reg.Reseal(ctx); err != nil || ex != 1 || re != 1 {
		t.Fatalf("Reseal after the primary changed = %d examined, %d resealed, %v; want 1, 1", ex, re, err)
	}
	after, err := reg.Get(ctx, name)
	if err != nil || after.State.Version <= before.State.Version {
		t.Fatalf("the record's version went from %d to %d (%v): want it moved by the rewrite", before.State.Version, after.State.Version, err)
	}
	if ex, re, err := reg.Reseal(ctx); err != nil || ex != 1 || re != 0 {
		t.Fatalf("a second Reseal = %d examined, %d resealed, %v; want 1, 0", ex, re, err)
	}
	unchanged, err := reg.Get(ctx, name)
	if err != nil || unchanged.State.Version != after.State.Version {
		t.Fatalf("a Reseal with nothing to do moved the version from %d to %d (%v)", after.State.Version, unchanged.State.Version, err)
	}

	s.SetKeyring(ring(2, map[uint32][]byte{2: key2}))
	cl, err = claim()
	if err != nil || cl.Secrets == nil || cl.Secrets.NewPassword != password {
		t.Fatalf("claim after the sweep with key 1 gone: secrets %+v, %v; want the run's password", cl.Secrets, err)
	}
}

// What a rotator stores as a step's detail or a run's reason is audited,
// logged and shown to whoever may list the rotation: whatever of the
// admin DSN's password it holds (a driver quoting a password cut at an
// unescaped @ as a host) is removed before it is stored, from any
// rotator.
func TestAdvanceStoresNoPieceOfTheDSNsPassword(t *testing.T) {
	ctx := t.Context()
	s, reg := newRegistry(t)
	const name, holder, admin = "mp-pg", "rotator-1", "/dba/admin/postgres"
	if _, err := s.Put(ctx, admin+"/"+rotation.KeyDSN, []byte("postgres://admin:Zq9ab@Kx7cd@127.0.0.1:5999/postgres"), store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Create(ctx, rotation.Spec{Name: name, Driver: rotation.DriverPostgres, Admin: admin,
		Target: "/dba/services/mp/postgres", Users: []string{"mp-blue", "mp-green"}, Consumers: []string{"app:mp"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Run(ctx, name, "user:dora"); err != nil {
		t.Fatal(err)
	}
	cl, err := reg.Claim(ctx, name, holder, "user:dora", 10*time.Second)
	if err != nil || !cl.Held {
		t.Fatalf("claim: %+v, %v", cl, err)
	}
	const leak = "connect to the database as its admin: hostname resolving error: lookup Kx7cd@127.0.0.1: no such host"
	next := cl.Rotation.State
	next.Run, next.Phase, next.NewUser, next.RunStarted = next.Run+1, rotation.PhaseRunning, "mp-blue", time.Now().UTC()
	next.Steps = []rotation.Step{{Name: rotation.StepKey, Started: time.Now().UTC(), Detail: leak}}
	rot, err := reg.Advance(ctx, name, holder, "user:dora", next, &rotation.Secrets{NewPassword: "n3w-pw"})
	if err != nil {
		t.Fatal(err)
	}
	next = rot.State
	next.Steps = append([]rotation.Step(nil), next.Steps...)
	next.Phase, next.Reason = rotation.PhaseRollingBack, "step key did not finish within 2m: "+leak
	next.Steps = append(next.Steps, rotation.Step{Name: rotation.StepRollbackDisable, Started: time.Now().UTC()})
	if _, err := reg.Advance(ctx, name, holder, "user:dora", next, nil); err != nil {
		t.Fatal(err)
	}
	got, err := reg.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	texts := []string{got.State.Reason}
	for _, st := range got.State.Steps {
		texts = append(texts, st.Detail)
	}
	for _, text := range texts {
		if strings.Contains(text, "Kx7cd") || strings.Contains(text, "Zq9ab") {
			t.Errorf("stored: %q holds a piece of the DSN's password", text)
		}
	}
	if !strings.Contains(got.State.Reason, "lookup [redacted]@127.0.0.1") {
		t.Errorf("stored reason %q: want the rest of the message kept", got.State.Reason)
	}
}

// graftd holds a claim's TTL to the bounds the rotation package states
// for graftd and graft-agent both; none asked for is the default.
func TestRotationClaimTTLBounds(t *testing.T) {
	ctx := t.Context()
	_, reg := newRegistry(t)
	const name = "mp-pg"
	if _, err := reg.Create(ctx, rotation.Spec{Name: name, Driver: rotation.DriverPostgres, Admin: "/dba/admin/postgres",
		Target: "/dba/services/mp/postgres", Users: []string{"mp-blue", "mp-green"}, Consumers: []string{"app:mp"}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ttl     time.Duration
		refused bool
	}{
		{0, false},
		{rotation.MinClaimTTL, false},
		{rotation.MaxClaimTTL, false},
		{rotation.MinClaimTTL - time.Second, true},
		{rotation.MaxClaimTTL + time.Second, true},
	}
	for _, tt := range tests {
		_, err := reg.Claim(ctx, name, "rotator-1", "user:dora", tt.ttl)
		if got := errors.Is(err, rotation.ErrInvalid); got != tt.refused {
			t.Errorf("claim for %s: err %v, want refused %v", tt.ttl, err, tt.refused)
		}
		if !tt.refused && err != nil {
			t.Errorf("claim for %s: %v", tt.ttl, err)
		}
	}
}

// newRegistry starts an etcd and returns a store on it, with one random
// key, and a registry on the store.
func newRegistry(t *testing.T) (*store.Store, *registry.Registry) {
	t.Helper()
	env := testenv.Start(t)
	k, err := keyring.New(1, map[uint32][]byte{1: testenv.RandomKey()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.New(store.Config{Client: env.Client, Keyring: k, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return s, registry.New(s)
}
