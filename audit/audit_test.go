package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/nats-io/nats.go/jetstream"
)

func testKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// newLog builds a Log on js, closed at cleanup; adjust changes its Config.
func newLog(t testing.TB, js jetstream.JetStream, adjust func(*Config)) *Log {
	t.Helper()
	cfg := Config{JetStream: js, HMACKey: testKey(t), Logger: testenv.Logger(t)}
	if adjust != nil {
		adjust(&cfg)
	}
	l, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func query(t *testing.T, l *Log, f Filter) []Record {
	t.Helper()
	got, err := l.Query(ctxT(t), f)
	if err != nil {
		t.Fatalf("Query(%+v): %v", f, err)
	}
	return got
}

func requestIDs(rs []Record) []string {
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.RequestID
	}
	return ids
}

func streamMsgs(t testing.TB, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo().State.Msgs
}

func TestAppendThenQuery(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	fixed := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	l := newLog(t, js, func(c *Config) { c.Now = func() time.Time { return fixed } })

	want := Record{
		RequestID: "req-1",
		Principal: "app:message-processor",
		Method:    "Put",
		Action:    "write",
		Path:      "/app/message-processor/config/level",
		Result:    "ok",
		Revision:  42,
		Peer:      "127.0.0.1:5555",
		ValueHMAC: l.HMAC([]byte("debug")),
		Detail:    "created",
	}
	if err := l.Append(ctxT(t), want); err != nil {
		t.Fatalf("Append: %v", err)
	}
	got := query(t, l, Filter{})
	if len(got) != 1 {
		t.Fatalf("Query returned %d records, want 1: %+v", len(got), got)
	}
	if !got[0].Time.Equal(fixed) {
		t.Errorf("Time = %v, want %v (set from Config.Now when zero)", got[0].Time, fixed)
	}
	got[0].Time, want.Time = time.Time{}, time.Time{}
	if got[0] != want {
		t.Errorf("Query returned\n %+v\nwant\n %+v", got[0], want)
	}
}

func TestAppendKeepsCallerTime(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	at := time.Now().Add(-time.Hour).UTC()
	if err := l.Append(ctxT(t), Record{RequestID: "r", Result: "ok", Time: at}); err != nil {
		t.Fatal(err)
	}
	got := query(t, l, Filter{})
	if len(got) != 1 || !got[0].Time.Equal(at) {
		t.Fatalf("got %+v, want one record at %v", got, at)
	}
}

func TestQueryFilters(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	now := time.Now()
	records := []Record{
		{RequestID: "foo", Principal: "app:foo", Path: "/app/foo", Time: now.Add(-3 * time.Hour)},
		{RequestID: "foo-x", Principal: "app:foo", Path: "/app/foo/x", Time: now.Add(-2 * time.Hour)},
		{RequestID: "foo-evil", Principal: "app:foo-evil", Path: "/app/foo-evil/x", Time: now.Add(-time.Hour)},
		{RequestID: "dba", Principal: "user:dba", Path: "/dba/passpack/db/password", Time: now.Add(-30 * time.Minute)},
		{RequestID: "admin", Principal: "user:root", Time: now},
	}
	for _, r := range records {
		r.Method, r.Action, r.Result = "Get", "read", "allowed"
		if err := l.Append(ctxT(t), r); err != nil {
			t.Fatalf("Append %s: %v", r.RequestID, err)
		}
	}
	tests := []struct {
		name   string
		filter Filter
		want   []string
	}{
		{"everything", Filter{}, []string{"foo", "foo-x", "foo-evil", "dba", "admin"}},
		{"root prefix", Filter{PathPrefix: "/"}, []string{"foo", "foo-x", "foo-evil", "dba", "admin"}},
		{"prefix is segment-aware", Filter{PathPrefix: "/app/foo"}, []string{"foo", "foo-x"}},
		{"trailing slash", Filter{PathPrefix: "/app/foo/"}, []string{"foo", "foo-x"}},
		{"exact leaf", Filter{PathPrefix: "/app/foo/x"}, []string{"foo-x"}},
		{"partial segment matches nothing", Filter{PathPrefix: "/app/fo"}, nil},
		{"evil twin alone", Filter{PathPrefix: "/app/foo-evil"}, []string{"foo-evil"}},
		{"subtree", Filter{PathPrefix: "/app"}, []string{"foo", "foo-x", "foo-evil"}},
		{"principal", Filter{Principal: "app:foo"}, []string{"foo", "foo-x"}},
		{"principal is exact", Filter{Principal: "app:fo"}, nil},
		{"since", Filter{Since: now.Add(-90 * time.Minute)}, []string{"foo-evil", "dba", "admin"}},
		{"until", Filter{Until: now.Add(-90 * time.Minute)}, []string{"foo", "foo-x"}},
		{"since and until", Filter{Since: now.Add(-150 * time.Minute), Until: now.Add(-10 * time.Minute)}, []string{"foo-x", "foo-evil", "dba"}},
		{"since is inclusive, until exclusive", Filter{Since: now.Add(-2 * time.Hour), Until: now.Add(-time.Hour)}, []string{"foo-x"}},
		{"all filters", Filter{PathPrefix: "/app/foo", Principal: "app:foo", Since: now.Add(-150 * time.Minute)}, []string{"foo-x"}},
		{"since in the future", Filter{Since: now.Add(time.Hour)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := requestIDs(query(t, l, tt.filter))
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestQueryInvalidFilter(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	now := time.Now()
	for _, f := range []Filter{
		{Limit: -1},
		{Since: now, Until: now},
		{Since: now, Until: now.Add(-time.Second)},
	} {
		if _, err := l.Query(ctxT(t), f); !errors.Is(err, ErrInvalidFilter) {
			t.Errorf("Query(%+v) = %v, want ErrInvalidFilter", f, err)
		}
	}
}

func TestQueryLimitReturnsNewest(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	var all []string
	for i := range 30 {
		id := fmt.Sprintf("r%02d", i)
		all = append(all, id)
		if err := l.Append(ctxT(t), Record{RequestID: id, Result: "allowed", Path: "/app/a"}); err != nil {
			t.Fatal(err)
		}
		// Records outside the filter must not count against the limit.
		if err := l.Append(ctxT(t), Record{RequestID: id + "-other", Result: "allowed", Path: "/app/b"}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		limit int
		want  []string
	}{
		{1, all[29:]},
		{5, all[25:]},
		{14, all[16:]},
		{0, all}, // default 100
		{30, all},
		{50, all},
		{MaxQueryLimit + 1, all},
	}
	for _, tt := range tests {
		got := requestIDs(query(t, l, Filter{PathPrefix: "/app/a", Limit: tt.limit}))
		if !slices.Equal(got, tt.want) {
			t.Errorf("Limit %d: got %q, want %q", tt.limit, got, tt.want)
		}
	}
}

func TestQueryEmptyStreamReturnsQuickly(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	for _, f := range []Filter{{}, {Since: time.Now().Add(-time.Hour)}, {PathPrefix: "/app/x"}} {
		start := time.Now()
		got := query(t, l, f)
		if len(got) != 0 {
			t.Errorf("Query(%+v) on an empty stream = %+v", f, got)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Query(%+v) on an empty stream took %s", f, d)
		}
	}
}

// A query whose start time is after every stored record, and one whose
// filter matches nothing, end at the stream's end rather than waiting for
// records that will never come.
func TestQueryEndsAtStreamEnd(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	for i := range 3 {
		if err := l.Append(ctxT(t), Record{RequestID: fmt.Sprint(i), Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []Filter{
		{Since: time.Now().Add(time.Minute)},
		{Since: time.Now().Add(time.Hour)},
		{Principal: "nobody"},
	} {
		start := time.Now()
		if got := query(t, l, f); len(got) != 0 {
			t.Errorf("Query(%+v) = %+v, want none", f, got)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Query(%+v) took %s", f, d)
		}
	}
}

// Query reads up to the last record stored when it began, so a busy stream
// does not keep it reading forever.
func TestQueryEndsWhileRecordsArrive(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	for i := range 100 {
		if err := l.Append(ctxT(t), Record{RequestID: fmt.Sprint("before-", i), Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 0; ctx.Err() == nil; i++ {
			l.Append(ctx, Record{RequestID: fmt.Sprint("during-", i), Result: "ok"})
		}
	}()
	for range 3 {
		got := query(t, l, Filter{Limit: MaxQueryLimit})
		if len(got) < 100 {
			t.Errorf("Query returned %d records, want at least the 100 stored before it", len(got))
		}
	}
	cancel()
	<-writerDone
}

func TestAppendAsyncArrives(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	const n = 50
	for i := range n {
		l.AppendAsync(Record{RequestID: fmt.Sprintf("a%02d", i), Principal: "app:x", Method: "Get", Action: "read", Path: "/app/x/k", Result: "allowed"})
	}
	testenv.WaitFor(t, 10*time.Second, func() bool { return streamMsgs(t, js, DefaultStream) == n })
	got := query(t, l, Filter{Principal: "app:x"})
	if len(got) != n {
		t.Fatalf("Query returned %d records, want %d", len(got), n)
	}
	for _, r := range got {
		if r.Time.IsZero() {
			t.Errorf("record %s has no time", r.RequestID)
		}
	}
	if d := l.Dropped(); d != 0 {
		t.Errorf("Dropped = %d, want 0", d)
	}
}

// lineCounter is a log sink that counts lines containing a message.
type lineCounter struct{ testenv.Buffer }

func (c *lineCounter) count(msg string) int {
	return strings.Count(c.String(), "msg=\""+msg+"\"")
}

func TestAppendAsyncLogsEveryDropWhenNATSIsDown(t *testing.T) {
	n, js := testenv.StartJetStream(t)
	logs := &lineCounter{}
	l := newLog(t, js, func(c *Config) {
		c.QueueSize = 2
		c.PublishTimeout = 200 * time.Millisecond
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	n.Close()

	const total = 20
	start := time.Now()
	for i := range total {
		l.AppendAsync(Record{RequestID: fmt.Sprint(i), Principal: "app:x", Path: "/app/x/k", Result: "allowed"})
	}
	// Each call waits at most a few milliseconds for room in the queue.
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("%d AppendAsync calls took %s with NATS down", total, d)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := l.Dropped(); got != total {
		t.Errorf("Dropped = %d, want %d", got, total)
	}
	if got := logs.count("audit record dropped"); got != total {
		t.Errorf("logged %d drops, want %d:\n%s", got, total, logs.String())
	}
}

func TestAppendFailsPromptlyWhenNATSIsDown(t *testing.T) {
	n, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	if err := l.Append(ctxT(t), Record{RequestID: "before", Result: "ok"}); err != nil {
		t.Fatalf("Append before shutdown: %v", err)
	}
	n.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := l.Append(ctx, Record{RequestID: "after", Method: "Put", Action: "write", Path: "/app/x/k", Result: "allowed"})
	if err == nil {
		t.Fatal("Append with NATS down succeeded; the write it audits would go unaudited")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Append with NATS down took %s, want about the context's 500ms", d)
	}
	t.Logf("Append with NATS down: %v after %s", err, time.Since(start).Round(time.Millisecond))
}

func TestFileSink(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	file := filepath.Join(t.TempDir(), "logs", "audit.jsonl")
	l := newLog(t, js, func(c *Config) { c.File = file })

	for i := range 3 {
		if err := l.Append(ctxT(t), Record{RequestID: fmt.Sprintf("s%d", i), Method: "Put", Action: "write", Path: "/app/x/k", Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		l.AppendAsync(Record{RequestID: fmt.Sprintf("a%d", i), Method: "Get", Action: "read", Path: "/app/x/k", Result: "allowed"})
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("file mode = %v, want 0600", perm)
	}
	got := readLines(t, file)
	slices.Sort(got)
	if want := []string{"a0", "a1", "s0", "s1", "s2"}; !slices.Equal(got, want) {
		t.Errorf("file holds %q, want %q", got, want)
	}
}

// readLines decodes a JSON-lines file and returns the request ids.
func readLines(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q is not a record: %v", sc.Text(), err)
		}
		ids = append(ids, r.RequestID)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestFileSinkTightensExistingMode(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(file, []byte(`{"request_id":"old"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	l := newLog(t, js, func(c *Config) { c.File = file })
	if err := l.Append(ctxT(t), Record{RequestID: "new", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("file mode = %v, want 0600", perm)
	}
	if got, want := readLines(t, file), []string{"old", "new"}; !slices.Equal(got, want) {
		t.Errorf("file holds %q, want %q (appended, not truncated)", got, want)
	}
}

func TestHMAC(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	// RFC 4231 test case 6: a key longer than the hash's block size.
	rfcKey := bytes.Repeat([]byte{0xaa}, 131)
	l1 := newLog(t, js, func(c *Config) { c.HMACKey = rfcKey })
	got := l1.HMAC([]byte("Test Using Larger Than Block-Size Key - Hash Key First"))
	if want := "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"; got != want {
		t.Errorf("HMAC of the RFC 4231 case 6 input = %s, want %s", got, want)
	}

	l2 := newLog(t, js, nil)
	l3 := newLog(t, js, nil)
	secret := []byte("s3cr3t-postgres-password")
	a, b := l2.HMAC(secret), l2.HMAC(secret)
	if a != b {
		t.Errorf("HMAC is not deterministic: %s vs %s", a, b)
	}
	if c := l3.HMAC(secret); c == a {
		t.Errorf("two keys gave the same HMAC %s", a)
	}
	if l2.HMAC([]byte("s3cr3t-postgres-passwore")) == a {
		t.Error("different values gave the same HMAC")
	}
	if len(a) != 64 {
		t.Errorf("HMAC %q has %d hex digits, want 64", a, len(a))
	}
	if strings.Contains(a, string(secret)) || strings.Contains(a, hex.EncodeToString(secret)) {
		t.Errorf("HMAC %q contains the value", a)
	}
}

func TestSecretValueNeverStored(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	l := newLog(t, js, func(c *Config) { c.File = file })
	secret := "pw-" + rand.Text()
	r := Record{RequestID: "w1", Principal: "user:dba", Method: "Put", Action: "write", Path: "/dba/db/password", Result: "ok", ValueHMAC: l.HMAC([]byte(secret))}
	if err := l.Append(ctxT(t), r); err != nil {
		t.Fatal(err)
	}
	l.AppendAsync(Record{RequestID: "r1", Principal: "app:x", Method: "Get", Action: "read", Path: "/dba/db/password", Result: "allowed", ValueHMAC: l.HMAC([]byte(secret))})
	testenv.WaitFor(t, 10*time.Second, func() bool { return streamMsgs(t, js, DefaultStream) == 2 })

	got := query(t, l, Filter{})
	if len(got) != 2 {
		t.Fatalf("Query returned %d records, want 2", len(got))
	}
	encoded, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctxT(t), DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := s.GetMsg(ctxT(t), seq)
		if err != nil {
			t.Fatal(err)
		}
		encoded = append(encoded, m.Data...)
		for k, v := range m.Header {
			encoded = append(encoded, k+strings.Join(v, "")...)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"query result and stream messages": encoded, "file sink": onDisk} {
		if !bytes.Contains(b, []byte(r.ValueHMAC)) {
			t.Errorf("%s lack the value HMAC; the check below proves nothing", name)
		}
		if bytes.Contains(b, []byte(secret)) || bytes.Contains(b, []byte(hex.EncodeToString([]byte(secret)))) {
			t.Errorf("%s contain the secret value", name)
		}
	}
}

func TestStreamConfig(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	newLog(t, js, func(c *Config) { c.MaxAge = 36 * time.Hour })
	info := streamInfo(t, js, DefaultStream)
	if info.Config.Storage != jetstream.FileStorage {
		t.Errorf("Storage = %v, want file", info.Config.Storage)
	}
	if info.Config.Retention != jetstream.LimitsPolicy {
		t.Errorf("Retention = %v, want limits", info.Config.Retention)
	}
	if info.Config.MaxAge != 36*time.Hour {
		t.Errorf("MaxAge = %s, want 36h", info.Config.MaxAge)
	}
	if info.Config.Duplicates != 2*time.Minute {
		t.Errorf("Duplicates = %s, want 2m", info.Config.Duplicates)
	}
	if !slices.Equal(info.Config.Subjects, []string{DefaultSubject}) {
		t.Errorf("Subjects = %q, want [%s]", info.Config.Subjects, DefaultSubject)
	}
	if !info.Config.DenyDelete || !info.Config.DenyPurge {
		t.Errorf("DenyDelete = %v, DenyPurge = %v; want both", info.Config.DenyDelete, info.Config.DenyPurge)
	}

	// A later graftd with another retention updates the stream.
	newLog(t, js, func(c *Config) { c.MaxAge = 48 * time.Hour })
	if got := streamInfo(t, js, DefaultStream).Config.MaxAge; got != 48*time.Hour {
		t.Errorf("after update MaxAge = %s, want 48h", got)
	}

	// Defaults, on a stream of another name and subject.
	newLog(t, js, func(c *Config) { c.Stream, c.Subject = "OTHER_AUDIT", "other.audit" })
	if got := streamInfo(t, js, "OTHER_AUDIT").Config.MaxAge; got != DefaultMaxAge {
		t.Errorf("default MaxAge = %s, want %s", got, DefaultMaxAge)
	}

	// A retention shorter than the dedup window bounds the window.
	newLog(t, js, func(c *Config) { c.Stream, c.Subject, c.MaxAge = "SHORT_AUDIT", "short.audit", 30*time.Second })
	if got := streamInfo(t, js, "SHORT_AUDIT").Config.Duplicates; got != 30*time.Second {
		t.Errorf("Duplicates with MaxAge 30s = %s, want 30s", got)
	}
}

func streamInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(ctxT(t), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo()
}

func TestDeduplication(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	r := Record{RequestID: "req-9", Method: "CreateRule", Action: "share", Path: "/dba/db", Result: "allowed"}
	for range 3 { // a retried publish
		if err := l.Append(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	// The same request's other check, and its outcome, are other records.
	other := r
	other.Action, other.Path = "write", "/app/x/replicated/db"
	outcome := r
	outcome.Result = "ok"
	for _, r := range []Record{other, outcome} {
		if err := l.Append(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	// Without a request id nothing is deduplicated.
	for range 2 {
		if err := l.Append(ctxT(t), Record{Result: "denied"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := streamMsgs(t, js, DefaultStream); got != 5 {
		t.Errorf("stream holds %d records, want 5", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	key := testKey(t)
	tests := []struct {
		name string
		cfg  Config
		want []string // every problem is reported
	}{
		{"nothing", Config{}, []string{"JetStream is required", "HMACKey has 0 bytes"}},
		{"short key", Config{JetStream: js, HMACKey: key[:31]}, []string{"HMACKey has 31 bytes"}},
		{"wildcard subject", Config{JetStream: js, HMACKey: key, Subject: "graft.>"}, []string{"subject"}},
		{"empty subject token", Config{JetStream: js, HMACKey: key, Subject: "graft..audit"}, []string{"subject"}},
		{"dotted stream", Config{JetStream: js, HMACKey: key, Stream: "GRAFT.AUDIT"}, []string{"stream name"}},
		{"negatives", Config{JetStream: js, HMACKey: key, MaxAge: -time.Hour, Replicas: -1, QueueSize: -1, PublishTimeout: -time.Second}, []string{"MaxAge", "Replicas", "QueueSize", "PublishTimeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := New(context.Background(), tt.cfg)
			if err == nil {
				l.Close()
				t.Fatal("New succeeded")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v is not ErrInvalidConfig", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestClose(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	l := newLog(t, js, nil)
	l.AppendAsync(Record{RequestID: "queued", Result: "allowed"})
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := streamMsgs(t, js, DefaultStream); got != 1 {
		t.Errorf("after Close the stream holds %d records, want the 1 queued", got)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := l.Append(ctxT(t), Record{RequestID: "late", Result: "ok"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
	l.AppendAsync(Record{RequestID: "late", Result: "allowed"})
	if got := l.Dropped(); got != 1 {
		t.Errorf("Dropped after AppendAsync on a closed log = %d, want 1", got)
	}
}

func TestUnderPrefix(t *testing.T) {
	tests := []struct {
		path, prefix string
		want         bool
	}{
		{"/app/foo", "", true},
		{"", "", true},
		{"/app/foo", "/app/foo", true},
		{"/app/foo/x", "/app/foo", true},
		{"/app/foo/x/y", "/app/foo", true},
		{"/app/foo-evil", "/app/foo", false},
		{"/app/foo-evil/x", "/app/foo", false},
		{"/app/fo", "/app/foo", false},
		{"/app/foox", "/app/foo", false},
		{"/app", "/app/foo", false},
		{"", "/app", false},
	}
	for _, tt := range tests {
		if got := underPrefix(tt.path, tt.prefix); got != tt.want {
			t.Errorf("underPrefix(%q, %q) = %v, want %v", tt.path, tt.prefix, got, tt.want)
		}
	}
}
