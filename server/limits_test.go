package server_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/server"
)

// bomb is a grpc compressor for tests that sends a fixed gzip blob,
// whatever the message, and counts the bytes graftd decompresses: a
// request that is a few KB on the wire and megabytes once decoded, as an
// attacker would send it, with no cost to the test's own client.
type bomb struct {
	mu           sync.Mutex
	blob         []byte
	decompressed atomic.Int64
}

var theBomb = &bomb{}

func init() { encoding.RegisterCompressor(theBomb) }

func (b *bomb) Name() string { return "graft-test-bomb" }

func (b *bomb) Compress(w io.Writer) (io.WriteCloser, error) {
	b.mu.Lock()
	blob := b.blob
	b.mu.Unlock()
	return &blobWriter{w: w, blob: blob}, nil
}

func (b *bomb) Decompress(r io.Reader) (io.Reader, error) {
	z, err := gzip.NewReader(r)
	if err != nil {
		return nil, err
	}
	return &countingReader{r: z, n: &b.decompressed}, nil
}

// arm makes every message sent with the bomb a PutRequest of a value of
// size bytes to path.
func (b *bomb) arm(t *testing.T, path string, size int) {
	t.Helper()
	raw, err := proto.Marshal(&graftv1.PutRequest{Path: path, Value: make([]byte, size)})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	z, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	z.Write(raw)
	z.Close()
	b.mu.Lock()
	b.blob = buf.Bytes()
	b.mu.Unlock()
}

type blobWriter struct {
	w    io.Writer
	blob []byte
}

func (w *blobWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *blobWriter) Close() error {
	_, err := w.w.Write(w.blob)
	return err
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// heapAllocs is the bytes the process has allocated on the heap so far.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestUnauthenticatedCallsAreRefusedBeforeTheirBodyIsRead sends, with no
// token and with a wrong one, requests that are a few KB on the wire and
// megabytes decoded. graftd must refuse them from their headers alone:
// nothing is decompressed and the heap does not grow with them.
func TestUnauthenticatedCallsAreRefusedBeforeTheirBodyIsRead(t *testing.T) {
	h := start(t)
	// Small in CI; GRAFT_TEST_BOMB_MIB=60 GRAFT_TEST_BOMB_CALLS=12
	// reproduces the report's figures.
	size, calls := 3<<20, 16
	if v, err := strconv.Atoi(os.Getenv("GRAFT_TEST_BOMB_MIB")); err == nil {
		size = v << 20
	}
	if v, err := strconv.Atoi(os.Getenv("GRAFT_TEST_BOMB_CALLS")); err == nil {
		calls = v
	}
	theBomb.arm(t, "/app/x/a", size)
	opts := []grpc.CallOption{grpc.UseCompressor(theBomb.Name())}

	// The bomb works: an authenticated call is decoded (and refused as too
	// large, or written).
	before := theBomb.decompressed.Load()
	h.kv.Put(root(), &graftv1.PutRequest{Path: "/x"}, opts...)
	if theBomb.decompressed.Load() == before {
		t.Fatal("an authenticated call was not decompressed; the test's compressor is not in use")
	}

	before = theBomb.decompressed.Load()
	allocs := heapAllocs()
	var wg sync.WaitGroup
	errs := make([]error, calls)
	for i := range calls {
		ctx := context.Background()
		if i%2 == 1 {
			ctx = withToken("graft_nope")
		}
		wg.Go(func() { _, errs[i] = h.kv.Put(ctx, &graftv1.PutRequest{Path: "/x"}, opts...) })
	}
	wg.Wait()
	grew := heapAllocs() - allocs
	for _, err := range errs {
		wantCode(t, err, codes.Unauthenticated)
	}
	if n := theBomb.decompressed.Load() - before; n != 0 {
		t.Errorf("graftd decompressed %d bytes of %d unauthenticated calls; want none", n, calls)
	}
	t.Logf("%d unauthenticated calls of %d MiB each: the process allocated %.1f MiB", calls, size>>20, float64(grew)/(1<<20))
	if limit := uint64(size); grew > limit {
		t.Errorf("%d unauthenticated calls of %d MiB made the process allocate %d MiB; want under %d MiB", calls, size>>20, grew>>20, limit>>20)
	}
}

// TestRequestSizeIsBoundedPerRPC: most rpcs take requests of a few MiB;
// only those that carry many paths (a share with many destinations) take
// more.
func TestRequestSizeIsBoundedPerRPC(t *testing.T) {
	h := startWith(t, server.Limits{MaxRequestBytes: 64 << 10, MaxLargeRequestBytes: 256 << 10})
	_, err := h.kv.Put(root(), &graftv1.PutRequest{Path: "/app/x/a", Value: make([]byte, 100<<10)})
	wantCode(t, err, codes.ResourceExhausted, "put", "65536")
	// A share of a few thousand destinations is larger than a put may
	// be, and is not refused for its size.
	if _, err := h.kv.Put(root(), &graftv1.PutRequest{Path: "/dba/s", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	var dests []string
	for i := range 3000 {
		dests = append(dests, "/app/a"+strconv.Itoa(i)+"/replicated/s")
	}
	repl := graftv1.NewReplicationServiceClient(h.conn)
	_, err = repl.Share(root(), &graftv1.ShareRequest{Source: "/dba/s", Destinations: dests})
	if st := statusOf(err); st == codes.ResourceExhausted {
		t.Fatalf("share of %d destinations refused for its size: %v", len(dests), err)
	}
	// Beyond even the large limit, grpc itself refuses it unread.
	_, err = h.kv.PutTree(root(), &graftv1.PutTreeRequest{Path: "/app/x", Values: map[string][]byte{"a": make([]byte, 300<<10)}})
	wantCode(t, err, codes.ResourceExhausted)
}

// TestWatchesArePerPrincipalBounded: one principal may hold only so many
// watches, over all its connections; others are not affected, and a
// watch that ends frees its slot.
func TestWatchesArePerPrincipalBounded(t *testing.T) {
	h := startWith(t, server.Limits{MaxWatchesPerPrincipal: 3})
	app := withToken("graft_app")
	var cancels []context.CancelFunc
	watch := func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		st, err := h.kv.Watch(ctx, &graftv1.WatchRequest{Prefix: "/app/x"})
		if err == nil {
			_, err = st.Recv() // the created notice
		}
		return err
	}
	for i := range 3 {
		if err := watch(app); err != nil {
			t.Fatalf("watch %d: %v", i+1, err)
		}
	}
	wantCode(t, watch(app), codes.ResourceExhausted, "3 watches")
	if err := watch(root()); err != nil {
		t.Fatalf("another principal's watch: %v", err)
	}
	// Calls other than watches are counted apart.
	if _, err := h.kv.List(app, &graftv1.ListRequest{Prefix: "/app/x"}); err != nil {
		t.Fatalf("list while at the watch limit: %v", err)
	}
	cancels[0]()
	waitFor(t, func() bool { _, w := h.srv.OpenCalls("app:x"); return w == 2 })
	if err := watch(app); err != nil {
		t.Fatalf("watch after one ended: %v", err)
	}
}

func statusOf(err error) codes.Code { return status.Code(err) }

// waitFor polls cond for up to 5 seconds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFinishedCallsFreeTheirSlot: a call's slot is given back when it
// ends, however it ends, so a principal's sequential calls never run out.
func TestFinishedCallsFreeTheirSlot(t *testing.T) {
	h := startWith(t, server.Limits{MaxCallsPerPrincipal: 2})
	for i := range 20 {
		_, err := h.kv.Get(root(), &graftv1.GetRequest{Path: "/app/x/none"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("call %d: %v", i+1, err)
		}
		_, err = h.kv.Get(root(), &graftv1.GetRequest{Path: "/app/../x"})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	waitFor(t, func() bool { c, _ := h.srv.OpenCalls("root"); return c == 0 })
}
