package replicator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/graft-sh/graft/store"
)

// Event is one committed change of a path. It never carries the value:
// secrets do not sit in NATS.
type Event struct {
	Path     string `json:"path"`
	Revision int64  `json:"rev"` // etcd revision of the change
	Op       string `json:"op"`  // OpPut or OpDelete
	// Txn lists every path the same transaction changed, this one
	// included, when there were several (up to maxTxnSiblings): a
	// tree write of a database user and its password. Whichever event
	// of them a replicator takes first copies them all together, so
	// their copies, too, change in one transaction.
	Txn []string `json:"txn,omitempty"`
}

// maxTxnSiblings bounds Event.Txn: larger transactions (a prefix
// restore, a batch of replica writes) are copied path by path.
const maxTxnSiblings = 64

// Event operations.
const (
	OpPut    = "put"
	OpDelete = "delete"
)

// MsgID is the event's JetStream deduplication id: a replayed change is
// dropped by the stream.
func (e Event) MsgID() string { return fmt.Sprintf("%d:%s", e.Revision, e.Path) }

// StreamConfig names the change-event stream.
type StreamConfig struct {
	Name     string        // default GRAFT_CHANGES
	Subject  string        // default graft.changes
	MaxAge   time.Duration // default 24h
	Replicas int           // default 1
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Name == "" {
		c.Name = "GRAFT_CHANGES"
	}
	if c.Subject == "" {
		c.Subject = "graft.changes"
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 24 * time.Hour
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	return c
}

// EnsureStream creates the change-event stream, or updates it when its
// configuration differs, and reports whether it had to create it. A
// stream as configured is left alone: an update while a replicator
// creates its consumer races inside nats-server (its file store's
// configuration is written and read unguarded), and every relay that
// starts to lead calls this.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (created bool, err error) {
	cfg = cfg.withDefaults()
	want := jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "graft change events: path, revision and operation of every committed change (never values)",
		Subjects:    []string{cfg.Subject},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.MaxAge,
		Duplicates:  2 * time.Minute,
		Replicas:    cfg.Replicas,
	}
	st, err := js.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		created = true
	case err != nil:
		return false, fmt.Errorf("read JetStream stream %s: %w (is JetStream enabled on the NATS server?)", cfg.Name, err)
	case sameStream(st.CachedInfo().Config, want):
		return false, nil
	}
	if _, err = js.CreateOrUpdateStream(ctx, want); err != nil {
		return false, fmt.Errorf("create JetStream stream %s: %w (is JetStream enabled on the NATS server?)", cfg.Name, err)
	}
	return created, nil
}

// sameStream reports whether a stream has the settings graft gives it.
func sameStream(have, want jetstream.StreamConfig) bool {
	return have.Description == want.Description && slices.Equal(have.Subjects, want.Subjects) &&
		have.Storage == want.Storage && have.Retention == want.Retention && have.MaxAge == want.MaxAge &&
		have.Duplicates == want.Duplicates && have.Replicas == want.Replicas
}

// OpenStream creates the change stream if it is missing and, if it was,
// asks for a reconcile: events in a lost stream that no replicator applied
// are gone, and only a full pass copies their changes.
func OpenStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig, s *store.Store) error {
	created, err := EnsureStream(ctx, js, cfg)
	if err != nil || !created {
		return err
	}
	return RequestReconcile(ctx, s, "the change stream "+cfg.withDefaults().Name+" was created (new, or its store was lost)")
}
