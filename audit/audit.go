// Package audit owns graft's audit log: one Record per authenticated
// request, allowed or denied, appended to a JetStream stream (GRAFT_AUDIT by
// default, file storage, limits retention) and optionally to a JSON-lines
// file.
//
// Records never carry values. Where a written value must be correlated
// (was the same password written twice? is this the value the agent
// acked?) the caller stores HMAC(value) under the cluster's audit key in
// Record.ValueHMAC; without the key the HMAC says nothing about the value.
// Detail is for short, non-secret context only.
//
// Writes use Append, which returns only after JetStream stored the record,
// so a write whose audit record cannot be stored fails instead of going
// unaudited. Reads use AppendAsync, which queues the record and never
// holds the caller up for long; a record it cannot store is logged at warn
// with everything but the value HMAC, and counted in Dropped.
package audit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults and bounds.
const (
	DefaultStream         = "GRAFT_AUDIT"
	DefaultSubject        = "graft.audit"
	DefaultMaxAge         = 90 * 24 * time.Hour
	DefaultQueueSize      = 4096
	DefaultPublishTimeout = 5 * time.Second
	MinHMACKeyBytes       = 32

	// dedupWindow is how long JetStream remembers a Nats-Msg-Id, so a
	// publish retried within it is stored once.
	dedupWindow = 2 * time.Minute
	// enqueueWait bounds how long AppendAsync waits for room in a full
	// queue before it drops the record.
	enqueueWait = 20 * time.Millisecond
	// asyncWorkers publish queued records concurrently, so one slow ack
	// does not stall the queue.
	asyncWorkers = 4
)

// Sentinel errors. Callers test them with errors.Is.
var (
	ErrInvalidConfig = errors.New("invalid audit config")
	ErrInvalidFilter = errors.New("invalid audit filter")
	ErrClosed        = errors.New("audit log closed")
	ErrQueueFull     = errors.New("audit queue full")
)

// Record is one audited request. It never holds a value: see ValueHMAC.
type Record struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id"`
	Principal string    `json:"principal"`
	// Method is the RPC, e.g. "Put".
	Method string `json:"method"`
	// Action is what was authorized: read, list, write, delete, share, admin, ...
	Action string `json:"action"`
	Path   string `json:"path,omitempty"`
	// Result is "allowed", "denied", "error" or "ok".
	Result string `json:"result"`
	// Code is the gRPC code name of an error.
	Code     string `json:"code,omitempty"`
	Revision int64  `json:"revision,omitempty"`
	Peer     string `json:"peer,omitempty"`
	// ValueHMAC is Log.HMAC of a written value, never the value.
	ValueHMAC string `json:"value_hmac,omitempty"`
	// Detail is short context for a human; never a secret.
	Detail string `json:"detail,omitempty"`
}

// Config configures New.
type Config struct {
	// JetStream holds the audit stream. Required.
	JetStream jetstream.JetStream
	// Stream is the stream name; default DefaultStream.
	Stream string
	// Subject is the one subject records are published on; default
	// DefaultSubject. Paths are not part of it: they can be long, and a
	// subject per path would make the stream's subject index as large as
	// the tree.
	Subject string
	// MaxAge is how long records are kept; 0 means DefaultMaxAge.
	MaxAge time.Duration
	// Replicas is the stream's replication factor; 0 means 1.
	Replicas int
	// File, if set, is a JSON-lines file every record is also appended to,
	// created with mode 0600.
	File string
	// HMACKey is the cluster's audit key, at least MinHMACKeyBytes long.
	// Required.
	HMACKey []byte
	// QueueSize bounds AppendAsync's queue; 0 means DefaultQueueSize.
	QueueSize int
	// PublishTimeout bounds each queued record's publish, and how long
	// Close waits for the queue to drain; 0 means DefaultPublishTimeout.
	PublishTimeout time.Duration
	Logger         *slog.Logger
	Now            func() time.Time
}

// Log appends audit records and queries them. It is safe for concurrent use.
type Log struct {
	js             jetstream.JetStream
	stream         string
	subject        string
	key            []byte
	file           *fileSink
	log            *slog.Logger
	now            func() time.Time
	publishTimeout time.Duration

	queue    chan Record
	dropped  atomic.Uint64
	workers  sync.WaitGroup
	workCtx  context.Context
	stopWork context.CancelFunc
	inflight sync.WaitGroup // synchronous Appends

	mu     sync.RWMutex // guards closed, and sending on queue
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// New creates or updates the audit stream, opens the file sink and starts
// the workers that drain AppendAsync's queue. ctx bounds setup only.
//
// The stream denies message deletion and purging: once stored, a record
// leaves only by age. JetStream does not let that be switched off again.
func New(ctx context.Context, cfg Config) (*Log, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	sc := jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "graft audit log",
		Subjects:    []string{cfg.Subject},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		Replicas:    cfg.Replicas,
		Duplicates:  min(dedupWindow, cfg.MaxAge),
		DenyDelete:  true,
		DenyPurge:   true,
	}
	if _, err := cfg.JetStream.CreateOrUpdateStream(ctx, sc); err != nil {
		return nil, fmt.Errorf("create audit stream %s: %w", cfg.Stream, err)
	}
	log := cfg.Logger
	l := &Log{
		js:             cfg.JetStream,
		stream:         cfg.Stream,
		subject:        cfg.Subject,
		key:            append([]byte(nil), cfg.HMACKey...),
		log:            log,
		now:            cfg.Now,
		publishTimeout: cfg.PublishTimeout,
		queue:          make(chan Record, cfg.QueueSize),
	}
	if cfg.File != "" {
		f, err := openFileSink(cfg.File, log)
		if err != nil {
			return nil, fmt.Errorf("open audit file: %w", err)
		}
		l.file = f
	}
	l.workCtx, l.stopWork = context.WithCancel(context.Background())
	for range asyncWorkers {
		l.workers.Add(1)
		go l.drain()
	}
	return l, nil
}

// setDefaults fills in defaults and reports every problem at once.
func (c *Config) setDefaults() error {
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.Subject == "" {
		c.Subject = DefaultSubject
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	var problems []string
	if c.JetStream == nil {
		problems = append(problems, "JetStream is required")
	}
	if len(c.HMACKey) < MinHMACKeyBytes {
		problems = append(problems, fmt.Sprintf("HMACKey has %d bytes, need at least %d", len(c.HMACKey), MinHMACKeyBytes))
	}
	if strings.ContainsAny(c.Stream, " \t\r\n.*>/\\") {
		problems = append(problems, fmt.Sprintf("stream name %q may not contain whitespace, '.', '*', '>', '/' or '\\'", c.Stream))
	}
	if !literalSubject(c.Subject) {
		problems = append(problems, fmt.Sprintf("subject %q must be a literal subject: dot-separated non-empty tokens, no wildcards or whitespace", c.Subject))
	}
	if c.MaxAge < 0 {
		problems = append(problems, fmt.Sprintf("MaxAge %s is negative", c.MaxAge))
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		problems = append(problems, fmt.Sprintf("Replicas %d is outside 1..5", c.Replicas))
	}
	if c.QueueSize < 0 {
		problems = append(problems, fmt.Sprintf("QueueSize %d is negative", c.QueueSize))
	}
	if c.PublishTimeout < 0 {
		problems = append(problems, fmt.Sprintf("PublishTimeout %s is negative", c.PublishTimeout))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(problems, "; "))
	}
	return nil
}

func literalSubject(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n*>") {
		return false
	}
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" {
			return false
		}
	}
	return true
}

// HMAC returns the hex HMAC-SHA256 of value under the audit key.
func (l *Log) HMAC(value []byte) string {
	m := hmac.New(sha256.New, l.key)
	m.Write(value)
	return hex.EncodeToString(m.Sum(nil))
}

// Append stores r and returns once JetStream has acknowledged it and the
// file sink, if any, has written and synced it. A write whose record cannot
// be appended must fail. Append sets r.Time if it is zero.
func (l *Log) Append(ctx context.Context, r Record) error {
	if r.Time.IsZero() {
		r.Time = l.now()
	}
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return ErrClosed
	}
	l.inflight.Add(1)
	l.mu.RUnlock()
	defer l.inflight.Done()
	return l.write(ctx, r)
}

// AppendAsync queues r and returns at once, or after at most a few
// milliseconds if the queue is full. A record that cannot be queued or
// stored is logged at warn and counted in Dropped. AppendAsync sets r.Time
// if it is zero, so the record carries the time of the request rather than
// of its publication.
func (l *Log) AppendAsync(r Record) {
	if r.Time.IsZero() {
		r.Time = l.now()
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.drop(r, ErrClosed)
		return
	}
	select {
	case l.queue <- r:
		return
	default:
	}
	t := time.NewTimer(enqueueWait)
	defer t.Stop()
	select {
	case l.queue <- r:
	case <-t.C:
		l.drop(r, ErrQueueFull)
	}
}

// Dropped reports how many records AppendAsync could not store.
func (l *Log) Dropped() uint64 { return l.dropped.Load() }

// Close drains AppendAsync's queue, waiting at most PublishTimeout before
// it gives up on the rest (each is logged and counted in Dropped), waits
// for synchronous Appends in flight, and closes the file sink. It may be
// called more than once.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		close(l.queue)
		l.mu.Unlock()

		done := make(chan struct{})
		go func() {
			l.workers.Wait()
			close(done)
		}()
		t := time.NewTimer(l.publishTimeout)
		select {
		case <-done:
		case <-t.C:
			l.log.Warn("audit queue not drained in time, dropping the rest", "queued", len(l.queue), "timeout", l.publishTimeout)
			l.stopWork()
			<-done
		}
		t.Stop()
		l.stopWork()
		l.inflight.Wait()
		if l.file != nil {
			l.closeErr = l.file.close()
		}
	})
	return l.closeErr
}

func (l *Log) drain() {
	defer l.workers.Done()
	for r := range l.queue {
		if err := l.workCtx.Err(); err != nil {
			l.drop(r, err)
			continue
		}
		ctx, cancel := context.WithTimeout(l.workCtx, l.publishTimeout)
		err := l.write(ctx, r)
		cancel()
		if err != nil {
			l.drop(r, err)
		}
	}
}

// write publishes r, then appends it to the file sink.
func (l *Log) write(ctx context.Context, r Record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode audit record: %w", err)
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(l.stream)}
	if r.RequestID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID(r)))
	}
	if _, err := l.js.PublishMsg(ctx, &nats.Msg{Subject: l.subject, Data: data}, opts...); err != nil {
		return fmt.Errorf("publish audit record: %w", err)
	}
	if l.file != nil {
		if err := l.file.write(append(data, '\n')); err != nil {
			return fmt.Errorf("write audit file: %w", err)
		}
	}
	return nil
}

// msgID names a record for JetStream's deduplication: a retried publish of
// the same record is stored once. One request can yield several records
// with the same result (a rule checks share on its source and write on its
// destination), so method, action and path are part of the name too,
// hashed to keep the header short whatever the path's length.
func msgID(r Record) string {
	h := sha256.Sum256([]byte(r.Method + "\x00" + r.Action + "\x00" + r.Path))
	return r.RequestID + "/" + r.Result + "/" + hex.EncodeToString(h[:8])
}

// drop logs a record that was not stored, with everything but its value
// HMAC, so the log is the audit trail of last resort.
func (l *Log) drop(r Record, err error) {
	n := l.dropped.Add(1)
	l.log.Warn("audit record dropped",
		"error", err,
		"dropped_total", n,
		"time", r.Time,
		"request_id", r.RequestID,
		"principal", r.Principal,
		"method", r.Method,
		"action", r.Action,
		"path", r.Path,
		"result", r.Result,
		"code", r.Code,
		"revision", r.Revision,
		"peer", r.Peer,
	)
}
