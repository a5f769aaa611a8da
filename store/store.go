// Package store owns graft's state in etcd and is the only package that
// talks to it. It keeps the namespace tree of encrypted values (entries,
// history, restore, watch), encrypts with a versioned keyring, enforces
// who may write a replicated destination and that a destination never goes
// backwards, and offers the building blocks other packages keep their own
// state with: typed records in named spaces (Records), leader elections
// (Lead), leases and the feed of committed changes (Changes). keys.go names
// every key it writes. It speaks graft types to its callers and never hands
// out etcd types.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/keyring"
)

// Defaults and bounds.
const (
	DefaultPrefix        = "/graft/"
	DefaultMaxValueBytes = 256 << 10
	DefaultHistoryLimit  = 50
	// MaxValueBytesLimit keeps a write (the new value plus the previous one
	// moved to history, both encoded) under etcd's 1.5 MiB request limit.
	MaxValueBytesLimit = 512 << 10
	maxWriteAttempts   = 16
	writeLockStripes   = 64
	maxTrimPerWrite    = 64
	// maxTxnOps is etcd's default --max-txn-ops: how many operations one
	// branch of a transaction may hold; the store sizes its batches to it.
	maxTxnOps = 128
)

// Sentinel errors. Callers test them with errors.Is.
var (
	ErrInvalidPath     = errors.New("invalid path")
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotFound        = errors.New("not found")
	ErrValueTooLarge   = errors.New("value too large")
	ErrRevisionChanged = errors.New("revision changed")
	ErrCompacted       = errors.New("revision compacted")
	ErrDecrypt         = keyring.ErrDecrypt
	ErrContention      = errors.New("too much write contention")
	ErrLeaseLost       = errors.New("lease lost: it expired or was revoked")
	ErrLeadershipLost  = errors.New("leadership lost: the election session expired")
	ErrClosed          = errors.New("store closed")
	// ErrDestination marks a write into a replicated destination by
	// anyone but the replicator; ErrDestinationNotEmpty a new rule whose
	// destination already holds values that no rule wrote.
	ErrDestination         = errors.New("replicated destination")
	ErrDestinationNotEmpty = errors.New("destination not empty")
)

// RevisionMismatchError is returned when a compare-and-swap finds another
// revision than the caller expected.
type RevisionMismatchError struct {
	Path     string
	Expected int64
	Current  int64 // 0 when the path does not exist
}

// Error leaves the path out: callers wrap it as "verb path: ...".
func (e *RevisionMismatchError) Error() string {
	if e.Current == 0 {
		return fmt.Sprintf("expected revision %d but the path does not exist", e.Expected)
	}
	if e.Expected == 0 {
		return fmt.Sprintf("expected the path not to exist but it is at revision %d", e.Current)
	}
	return fmt.Sprintf("expected revision %d but it is at revision %d; read it again and retry", e.Expected, e.Current)
}

func (e *RevisionMismatchError) Unwrap() error { return ErrRevisionChanged }

// ValueTooLargeError is returned for a value over the configured bound.
type ValueTooLargeError struct {
	Size, Max int
}

func (e *ValueTooLargeError) Error() string {
	return fmt.Sprintf("value is %d bytes; the limit is %d bytes (graftd --max-value-bytes)", e.Size, e.Max)
}

func (e *ValueTooLargeError) Unwrap() error { return ErrValueTooLarge }

// CompactedError is returned by Watch when the requested start revision is
// older than the oldest revision etcd still holds.
type CompactedError struct {
	Requested, Oldest int64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("revision %d has been compacted; the oldest available is %d: resume from it after re-reading current values", e.Requested, e.Oldest)
}

func (e *CompactedError) Unwrap() error { return ErrCompacted }

// Origin records why graft itself wrote an entry.
type Origin struct {
	Kind           string `json:"k,omitempty"`
	RuleID         string `json:"ri,omitempty"`
	SourcePath     string `json:"sp,omitempty"`
	SourceRevision int64  `json:"sr,omitempty"`
	// SourceTime is when the source version was committed (unix nanos),
	// for a replicated copy.
	SourceTime int64 `json:"st,omitempty"`
}

// Entry is one version of the value at a path.
type Entry struct {
	Path     string
	Value    []byte // nil where values are not read (List, History)
	Revision int64
	Author   string
	Time     time.Time
	Origin   *Origin
	Size     int
}

// Config configures a Store.
type Config struct {
	// Client is an etcd client to use; the Store does not close it.
	// Without one, New connects with Etcd and Close closes.
	Client *clientv3.Client
	Etcd   EtcdConfig
	// LeaseClient is etcd's lease API, over which the store renews leases
	// in batches on one stream (Lease.Renew). By default it is the one on
	// Client's connection; a Client that calls an in-process etcd
	// (v3client) has none, so pass embedded.Etcd.LeaseClient with it.
	// Without either, each renewal is a call of its own.
	LeaseClient pb.LeaseClient
	// Prefix under which every key lives; default "/graft/".
	Prefix string
	// Keyring encrypts values; required. Replace it with SetKeyring.
	Keyring *keyring.Keyring
	// MaxValueBytes bounds a value; default 256 KiB.
	MaxValueBytes int
	// HistoryLimit is how many previous versions a path keeps; default 50.
	HistoryLimit int
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Store reads and writes graft's state in etcd.
type Store struct {
	cli        *clientv3.Client
	ownsClient bool
	prefix     string
	kvPrefix   string
	hist       string
	maxValue   int
	histMax    int
	now        func() time.Time
	log        *slog.Logger
	keyring    atomic.Pointer[keyring.Keyring]
	// renew batches lease renewals; nil without a lease client.
	renew *renewer
	// watchStreams numbers Watch's etcd watch streams.
	watchStreams atomic.Uint64
	decryptions  atomic.Uint64
	// writeLocks are one-slot semaphores that serialize writes to a path
	// within this process; see lockPath.
	writeLocks [writeLockStripes]chan struct{}
}

// New validates cfg and returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.Keyring == nil {
		return nil, errors.New("store: Config.Keyring is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if !strings.HasPrefix(cfg.Prefix, "/") || !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("store: prefix %q must start and end with /", cfg.Prefix)
	}
	if cfg.MaxValueBytes == 0 {
		cfg.MaxValueBytes = DefaultMaxValueBytes
	}
	if cfg.MaxValueBytes < 0 || cfg.MaxValueBytes > MaxValueBytesLimit {
		return nil, fmt.Errorf("store: max value bytes %d out of range 1..%d", cfg.MaxValueBytes, MaxValueBytesLimit)
	}
	if cfg.HistoryLimit == 0 {
		cfg.HistoryLimit = DefaultHistoryLimit
	}
	if cfg.HistoryLimit < 1 {
		return nil, fmt.Errorf("store: history limit %d must be at least 1", cfg.HistoryLimit)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	owns := false
	if cfg.Client == nil && len(cfg.Etcd.Endpoints) == 0 {
		return nil, errors.New("store: Config.Etcd.Endpoints or Config.Client is required")
	}
	if cfg.Client == nil {
		cli, err := dial(cfg.Etcd)
		if err != nil {
			return nil, err
		}
		cfg.Client, owns = cli, true
	}
	s := &Store{
		cli:        cfg.Client,
		ownsClient: owns,
		prefix:     cfg.Prefix,
		kvPrefix:   cfg.Prefix + kvBase,
		hist:       cfg.Prefix + histBase,
		maxValue:   cfg.MaxValueBytes,
		histMax:    cfg.HistoryLimit,
		now:        cfg.Now,
		log:        cfg.Logger,
	}
	if cfg.LeaseClient == nil && cfg.Client.ActiveConnection() != nil {
		cfg.LeaseClient = pb.NewLeaseClient(cfg.Client.ActiveConnection())
	}
	if cfg.LeaseClient != nil {
		s.renew = newRenewer(cfg.Client.Ctx(), cfg.LeaseClient, cfg.Logger)
	}
	s.keyring.Store(cfg.Keyring)
	for i := range s.writeLocks {
		s.writeLocks[i] = make(chan struct{}, 1)
	}
	return s, nil
}

// SetKeyring replaces the keyring, for example after a rotation.
func (s *Store) SetKeyring(k *keyring.Keyring) { s.keyring.Store(k) }

// Keyring returns the keyring in use.
func (s *Store) Keyring() *keyring.Keyring { return s.keyring.Load() }

// MaxValueBytes is the configured value bound.
func (s *Store) MaxValueBytes() int { return s.maxValue }

// Ping checks that etcd answers a linearizable read, i.e. has a quorum.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.cli.Get(ctx, s.prefix+pingKey, clientv3.WithCountOnly())
	return err
}

// record is what a key under kv/ or hist/ holds.
type record struct {
	Cipher []byte  `json:"c"`
	Author string  `json:"a"`
	Time   int64   `json:"t"` // unix nanoseconds
	Size   int     `json:"s"`
	Origin *Origin `json:"o,omitempty"`
	// Prev is the revision of the version before this one, 0 for the first
	// version of a path. A prefix restore uses it to tell "did not exist"
	// from "history trimmed".
	Prev int64 `json:"p,omitempty"`
	// Rev pins the version's revision when the record was rewritten without
	// a change of value (a re-encryption sweep). Otherwise the revision is
	// the etcd mod revision of the kv key.
	Rev int64 `json:"r,omitempty"`
	// Ended and Deleted are set on history records: when the version stopped
	// being current, and whether a deletion ended it; Deleter is who
	// deleted it. The revision it ended at is the history key's mod
	// revision (written in the same transaction), unless EndRev pins it
	// (a re-encryption sweep rewrote the record).
	Ended   int64  `json:"e,omitempty"`
	Deleted bool   `json:"d,omitempty"`
	Deleter string `json:"da,omitempty"`
	EndRev  int64  `json:"er,omitempty"`
}

func decodeRecord(data []byte) (record, error) {
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("decode record: %w", err)
	}
	return r, nil
}

func (r record) encode() string {
	data, err := json.Marshal(r)
	if err != nil {
		panic(err) // a record always marshals
	}
	return string(data)
}

func (r record) revision(modRev int64) int64 {
	if r.Rev != 0 {
		return r.Rev
	}
	return modRev
}

func (r record) entry(path string, rev int64) Entry {
	return Entry{
		Path:     path,
		Revision: rev,
		Author:   r.Author,
		Time:     time.Unix(0, r.Time).UTC(),
		Origin:   r.Origin,
		Size:     r.Size,
	}
}

// parseHistKey splits a hist key into path and revision.
func (s *Store) parseHistKey(key string) (string, int64, bool) {
	rest, ok := strings.CutPrefix(key, s.hist)
	if !ok {
		return "", 0, false
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return "", 0, false
	}
	rev, err := strconv.ParseInt(rest[at+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return rest[:at], rev, true
}

// rangeEnd returns the etcd range [start, end) that holds prefix and every
// path below it. It may also hold siblings such as prefix-x or prefix.x,
// which callers filter with Under.
func rangeOf(base, prefix string) (string, string) {
	if prefix == "/" {
		return base + "/", clientv3.GetPrefixRangeEnd(base + "/")
	}
	return base + prefix, base + prefix + "0" // '0' follows '/'
}

func (s *Store) open(path string, r record) ([]byte, error) {
	s.decryptions.Add(1)
	return s.keyring.Load().Open(path, r.Cipher)
}

// Decryptions is how many values the store has decrypted since it was
// made: what reads cost, for tests and diagnostics.
func (s *Store) Decryptions() uint64 { return s.decryptions.Load() }

// Get returns the current version of path with its value.
func (s *Store) Get(ctx context.Context, path string) (Entry, error) {
	if _, err := ParsePath(path); err != nil {
		return Entry{}, fmt.Errorf("get %s: %w", ShortPath(path), err)
	}
	resp, err := s.cli.Get(ctx, s.kvKey(path))
	if err != nil {
		return Entry{}, fmt.Errorf("get %s: %w", path, err)
	}
	if len(resp.Kvs) == 0 {
		return Entry{}, fmt.Errorf("get %s: %w", path, ErrNotFound)
	}
	kv := resp.Kvs[0]
	r, err := decodeRecord(kv.Value)
	if err != nil {
		return Entry{}, fmt.Errorf("get %s: %w", path, err)
	}
	e := r.entry(path, r.revision(kv.ModRevision))
	if e.Value, err = s.open(path, r); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// GetRevision returns the version of path written at rev, current or from
// history, with its value.
func (s *Store) GetRevision(ctx context.Context, path string, rev int64) (Entry, error) {
	if _, err := ParsePath(path); err != nil {
		return Entry{}, fmt.Errorf("get %s: %w", ShortPath(path), err)
	}
	// Read the two keys the version can be under rather than the whole
	// history: that is up to HistoryLimit values of up to MaxValueBytes.
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.kvKey(path)),
		clientv3.OpGet(s.histKey(path, rev)),
	).Commit()
	if err != nil {
		return Entry{}, fmt.Errorf("get %s at revision %d: %w", path, rev, err)
	}
	for i, kvs := range [][]*mvccpb.KeyValue{resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs} {
		if len(kvs) == 0 {
			continue
		}
		r, err := decodeRecord(kvs[0].Value)
		if err != nil {
			return Entry{}, fmt.Errorf("get %s at revision %d: %w", path, rev, err)
		}
		if i == 0 && r.revision(kvs[0].ModRevision) != rev {
			continue // the current version is another one
		}
		e := r.entry(path, rev)
		if e.Value, err = s.open(path, r); err != nil {
			return Entry{}, err
		}
		return e, nil
	}
	return Entry{}, fmt.Errorf("get %s at revision %d: %w (see `graft history %s` for the retained revisions)", path, rev, ErrNotFound, path)
}
