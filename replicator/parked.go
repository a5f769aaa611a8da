package replicator

import (
	"context"
	"errors"
	"log/slog"

	"github.com/graft-sh/graft/internal/snapshot"
	"github.com/graft-sh/graft/store"
)

// Parked is a source change the replicator gave up on after retrying. It
// is kept in the store's parked space by source path, shown by `graft
// status`, and cleared when the source next replicates.
type Parked struct {
	Path     string `json:"path"`
	Revision int64  `json:"rev"`
	Op       string `json:"op"`
	Error    string `json:"error"`
	Attempts int    `json:"attempts"`
	Time     int64  `json:"t"` // unix nanos
}

// parkedChanges are the parked changes: their records, and a snapshot of
// them so that the replicator's hot path knows which sources have one
// without reading etcd.
type parkedChanges struct {
	recs *store.Records[Parked]
	snap *snapshot.Snapshot[Parked]
	log  *slog.Logger
}

func newParkedChanges(s *store.Store, log *slog.Logger) *parkedChanges {
	p := &parkedChanges{recs: store.NewRecords[Parked](s, store.SpaceParked), log: log}
	p.snap, _ = snapshot.New(snapshot.Config[Parked]{Name: "parked changes", Source: p.recs, Logger: log})
	return p
}

// put records a parked change of a source path, replacing an earlier one.
func (p *parkedChanges) put(ctx context.Context, c Parked) error {
	_, err := p.recs.Put(ctx, c.Path, c)
	return err
}

// get returns the parked change of a source path, or store.ErrNotFound.
func (p *parkedChanges) get(ctx context.Context, path string) (Parked, error) {
	rec, err := p.recs.Get(ctx, path)
	return rec.Value, err
}

// clear removes the parked changes of the given sources that are no newer
// than the revision each was just replicated at.
func (p *parkedChanges) clear(ctx context.Context, replicated map[string]int64) {
	for path, rev := range replicated {
		if _, ok := p.snap.Get(path); !ok {
			continue
		}
		rec, err := p.recs.Get(ctx, path)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err == nil && rec.Value.Revision > rev {
			continue // parked after this replication: still news
		}
		if err == nil {
			_, err = p.recs.Delete(ctx, path, p.recs.At(path, rec.Revision))
		}
		if err != nil && !errors.Is(err, store.ErrRevisionChanged) {
			p.log.Warn("clearing a parked change failed", "path", path, "err", err)
		}
	}
}
