// Package snapshot keeps an in-memory copy of a keyed collection current
// from a list and a watch: it lists the collection at a revision, follows
// the changes after it, ignores any change no newer than what it holds,
// and lists again whenever the watch breaks. graftd's token, policy and
// rule caches are snapshots of store records; graft-agent's view of its
// tree builds on the same type. It knows nothing of etcd: a Source does.
package snapshot

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/graft-sh/graft/internal/retry"
)

// Item is one element of a collection and the revision it was written at.
type Item[T any] struct {
	Key      string
	Value    T
	Revision int64
}

// Change is one change to a collection: Item written, or (Deleted) the
// item with Item.Key removed at Item.Revision.
type Change[T any] struct {
	Item[T]
	Deleted bool
}

// Source is a collection that can be listed and watched.
type Source[T any] interface {
	// List returns every item, sorted by key, and the revision read at.
	List(ctx context.Context) ([]Item[T], int64, error)
	// Watch delivers the changes after revision after, in order, one
	// batch per revision or more. The channel closes when ctx ends or
	// the watch fails; the snapshot then lists again.
	Watch(ctx context.Context, after int64) <-chan []Change[T]
}

// Config configures a Snapshot.
type Config[T any] struct {
	// Name says what is kept, for logs ("tokens").
	Name   string
	Source Source[T]
	// OnChange, if set, is called after every list or batch of changes
	// that moved the snapshot forward, with the revision it reflects.
	// Calls are serialised, and no change is applied during one: a view
	// derived from the items (an index, an authorizer) is rebuilt here
	// from Items, which then are the items at rev. (The items are not
	// passed: most callers only need to know, and sorting 10,000 of them
	// at each of 10,000 single changes was most of graftd's work while
	// 10,000 applications were created.)
	OnChange func(rev int64)
	Logger   *slog.Logger
}

// Snapshot is the in-memory copy. It is safe for concurrent use.
type Snapshot[T any] struct {
	cfg     Config[T]
	log     *slog.Logger
	loaded  chan struct{}
	once    sync.Once
	running atomic.Bool // Run is following the source

	// apply serialises changes of items and the OnChange calls they make.
	apply sync.Mutex
	mu    sync.RWMutex
	items map[string]Item[T]
	rev   int64 // the source revision items reflect
	// done is the revision whose OnChange has returned; moved is closed
	// (and replaced) each time it advances.
	done  int64
	moved chan struct{}
}

// New returns an empty snapshot; Run fills it and keeps it current.
func New[T any](cfg Config[T]) (*Snapshot[T], error) {
	if cfg.Source == nil {
		return nil, errors.New("snapshot: Config.Source is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Snapshot[T]{cfg: cfg, log: cfg.Logger, loaded: make(chan struct{}), items: map[string]Item[T]{}, moved: make(chan struct{})}, nil
}

// Run loads the collection and follows its changes until ctx ends,
// listing again whenever the watch breaks.
func (s *Snapshot[T]) Run(ctx context.Context) error {
	s.running.Store(true)
	defer s.running.Store(false)
	retry.Forever(ctx, s.log, "loading "+s.cfg.Name, 50*time.Millisecond, 2*time.Second, func(ctx context.Context) error {
		rev, err := s.load(ctx)
		if err != nil {
			return err
		}
		for batch := range s.cfg.Source.Watch(ctx, rev) {
			s.applyChanges(batch)
		}
		return nil
	})
	return nil
}

// Refresh lists the collection again, so that every change committed
// before the call is in the snapshot when it returns. graftd calls it
// after a change it made itself, so its caller can rely on the result at
// once; other replicas learn of the change from their watch.
func (s *Snapshot[T]) Refresh(ctx context.Context) error {
	_, err := s.load(ctx)
	return err
}

// awaitList is how long Await waits for the watch before it lists.
const awaitList = time.Second

// Await returns once the snapshot, and what OnChange derives from it,
// reflect revision rev: a change the caller just committed to the
// collection, which its caller may then rely on at once. It costs nothing
// when the watch has already brought the change, and waits for it
// otherwise (usually milliseconds). Should the watch not bring it within a
// second (it is broken), or Run have ended, Await lists the collection
// instead, as Refresh does; a snapshot never loaded has nothing to wait
// for (its first list holds the change). Unlike Refresh it does not read the
// whole collection on every write, which at thousands of items (tokens of
// as many applications) is most of a write's cost.
func (s *Snapshot[T]) Await(ctx context.Context, rev int64) error {
	if !s.running.Load() {
		select {
		case <-s.loaded:
			return s.Refresh(ctx) // Run has ended: nothing else brings it
		default:
			return nil // never loaded: the first list will hold it
		}
	}
	timer := time.NewTimer(awaitList)
	defer timer.Stop()
	for {
		s.mu.RLock()
		done, moved := s.done, s.moved
		s.mu.RUnlock()
		if done >= rev {
			return nil
		}
		select {
		case <-moved:
		case <-timer.C:
			return s.Refresh(ctx)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Loaded is closed once the collection has been listed.
func (s *Snapshot[T]) Loaded() <-chan struct{} { return s.loaded }

// Get returns the item with key.
func (s *Snapshot[T]) Get(key string) (T, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	it, ok := s.items[key]
	return it.Value, ok
}

// Items returns every item, sorted by key, and the revision they reflect.
func (s *Snapshot[T]) Items() ([]Item[T], int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sortedLocked(), s.rev
}

func (s *Snapshot[T]) sortedLocked() []Item[T] {
	out := make([]Item[T], 0, len(s.items))
	for _, it := range s.items {
		out = append(out, it)
	}
	slices.SortFunc(out, func(a, b Item[T]) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

// load lists the collection and installs it unless the snapshot already
// reflects a newer revision. It returns the revision listed at.
func (s *Snapshot[T]) load(ctx context.Context) (int64, error) {
	items, rev, err := s.cfg.Source.List(ctx)
	if err != nil {
		return 0, err
	}
	s.apply.Lock()
	defer s.apply.Unlock()
	s.mu.Lock()
	moved := rev > s.rev
	if moved {
		m := make(map[string]Item[T], len(items))
		for _, it := range items {
			m[it.Key] = it
		}
		s.items, s.rev = m, rev
	}
	s.mu.Unlock()
	if moved {
		s.changed(rev)
	}
	s.once.Do(func() { close(s.loaded) })
	return rev, nil
}

// applyChanges applies the changes newer than the snapshot.
func (s *Snapshot[T]) applyChanges(batch []Change[T]) {
	s.apply.Lock()
	defer s.apply.Unlock()
	s.mu.Lock()
	moved := false
	for _, c := range batch {
		if c.Revision <= s.rev {
			continue // a Refresh already read it
		}
		if c.Deleted {
			delete(s.items, c.Key)
		} else {
			s.items[c.Key] = c.Item
		}
		s.rev, moved = c.Revision, true
	}
	rev := s.rev
	s.mu.Unlock()
	if moved {
		s.changed(rev)
	}
}

// changed runs OnChange, then tells Await the revision is in effect. The
// caller holds s.apply.
func (s *Snapshot[T]) changed(rev int64) {
	if s.cfg.OnChange != nil {
		s.cfg.OnChange(rev)
	}
	s.mu.Lock()
	if rev > s.done {
		s.done = rev
		close(s.moved)
		s.moved = make(chan struct{})
	}
	s.mu.Unlock()
}
