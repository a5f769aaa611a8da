package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Query bounds.
const (
	DefaultQueryLimit = 100
	MaxQueryLimit     = 10000

	// streamClockSkew widens the stream-time window Query reads, because a
	// record's Time comes from the graftd that wrote it and the stream's
	// timestamp from the NATS server that stored it.
	streamClockSkew = 5 * time.Minute
	queryBatch      = 512
	// queryConsumerIdle lets the server remove a query's consumer if the
	// querying graftd dies before deleting it.
	queryConsumerIdle = time.Minute
)

// Filter selects the records Query returns. Zero fields select everything.
type Filter struct {
	// PathPrefix keeps records at this path or below it, segment by
	// segment: "/app/foo" keeps /app/foo and /app/foo/x but not
	// /app/foo-evil. "/" keeps every record.
	PathPrefix string
	// Principal keeps only this principal's records.
	Principal string
	// Since keeps records with Time at or after it.
	Since time.Time
	// Until keeps records with Time before it.
	Until time.Time
	// Limit is the most records returned, the newest that match;
	// 0 means DefaultQueryLimit, and more than MaxQueryLimit means
	// MaxQueryLimit.
	Limit int
}

// Query returns the records that match f, oldest first in the order the
// stream stored them; if more than f.Limit match, the newest f.Limit. It
// reads the stream from f.Since (from its start if f.Since is zero) up to
// the last record stored when Query began, so it ends even while records
// keep arriving.
//
// Since positions the read by the stream's own timestamps, widened by a few
// minutes for clock skew; records are then filtered by their Time. A record
// is stored at or after its Time, so only one whose Time is ahead of the
// moment it was stored by more than the margin (a clock that wrong) can be
// missed. Until does not end the read early: a record queued during a NATS
// blip is stored well after its Time, and must still be found.
func (l *Log) Query(ctx context.Context, f Filter) ([]Record, error) {
	limit := f.Limit
	switch {
	case limit < 0:
		return nil, fmt.Errorf("%w: limit %d is negative", ErrInvalidFilter, limit)
	case limit == 0:
		limit = DefaultQueryLimit
	case limit > MaxQueryLimit:
		limit = MaxQueryLimit
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		return nil, fmt.Errorf("%w: until %s is not after since %s", ErrInvalidFilter, f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339))
	}
	prefix := strings.TrimRight(f.PathPrefix, "/")

	stream, err := l.js.Stream(ctx, l.stream)
	if err != nil {
		return nil, fmt.Errorf("query audit stream %s: %w", l.stream, err)
	}
	state := stream.CachedInfo().State
	if state.Msgs == 0 {
		return nil, nil
	}
	cc := jetstream.ConsumerConfig{
		Description:       "graft audit query",
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: queryConsumerIdle,
	}
	if !f.Since.IsZero() {
		start := f.Since.Add(-streamClockSkew)
		if start.After(state.LastTime) {
			return nil, nil
		}
		cc.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cc.OptStartTime = &start
	}
	cons, err := stream.CreateConsumer(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("query audit stream %s: %w", l.stream, err)
	}
	defer func() {
		// Deleting is tidiness: the idle threshold removes it anyway.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()

	var kept []Record
	keep := func(r Record) {
		kept = append(kept, r)
		if len(kept) >= 2*limit {
			kept = append(kept[:0], kept[len(kept)-limit:]...)
		}
	}
	for done := false; !done; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		batch, err := cons.FetchNoWait(queryBatch)
		if err != nil {
			return nil, fmt.Errorf("query audit stream %s: %w", l.stream, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				return nil, fmt.Errorf("query audit stream %s: %w", l.stream, err)
			}
			var r Record
			if err := json.Unmarshal(msg.Data(), &r); err != nil {
				l.log.Warn("skipping undecodable audit record", "stream", l.stream, "seq", md.Sequence.Stream, "error", err)
			} else if f.match(r, prefix) {
				keep(r)
			}
			if md.Sequence.Stream >= state.LastSeq {
				done = true
				break
			}
		}
		if done {
			break
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("query audit stream %s: %w", l.stream, err)
		}
		if n == 0 {
			// Nothing deliverable: the end (the last records may have aged
			// out), or a fetch that ended early. The pending count says which.
			info, err := cons.Info(ctx)
			if err != nil {
				return nil, fmt.Errorf("query audit stream %s: %w", l.stream, err)
			}
			done = info.NumPending == 0
		}
	}
	if len(kept) > limit {
		kept = kept[len(kept)-limit:]
	}
	return kept, nil
}

func (f Filter) match(r Record, prefix string) bool {
	if f.Principal != "" && r.Principal != f.Principal {
		return false
	}
	if !f.Since.IsZero() && r.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !r.Time.Before(f.Until) {
		return false
	}
	return underPrefix(r.Path, prefix)
}

// underPrefix reports whether path is prefix or below it, segment-aware.
// prefix has no trailing slash; "" is the root.
func underPrefix(path, prefix string) bool {
	return prefix == "" || path == prefix || strings.HasPrefix(path, prefix+"/")
}
