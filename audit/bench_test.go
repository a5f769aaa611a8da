package audit

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
)

func benchRecord(l *Log, i int) Record {
	return Record{
		RequestID: "bench-" + strconv.Itoa(i),
		Principal: "app:message-processor",
		Method:    "Put",
		Action:    "write",
		Path:      "/app/message-processor/config/level",
		Result:    "ok",
		Revision:  int64(i),
		Peer:      "127.0.0.1:5555",
		ValueHMAC: l.HMAC([]byte("debug")),
	}
}

// BenchmarkAppend measures a synchronous append: publish and JetStream ack
// on a loopback embedded server.
func BenchmarkAppend(b *testing.B) {
	_, js := testenv.StartJetStream(b)
	l := newLog(b, js, nil)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := l.Append(ctx, benchRecord(l, i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendAsync measures queued appends until every one is stored,
// so the figure is throughput, not just the cost of queueing.
func BenchmarkAppendAsync(b *testing.B) {
	_, js := testenv.StartJetStream(b)
	l := newLog(b, js, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.AppendAsync(benchRecord(l, i))
	}
	deadline := time.Now().Add(time.Minute)
	for streamMsgs(b, js, DefaultStream)+l.Dropped() < uint64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d records stored after a minute", streamMsgs(b, js, DefaultStream), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(l.Dropped()), "dropped")
}

// BenchmarkAppendWithFile adds the file sink's write and fsync to each
// synchronous append.
func BenchmarkAppendWithFile(b *testing.B) {
	_, js := testenv.StartJetStream(b)
	l := newLog(b, js, func(c *Config) { c.File = filepath.Join(b.TempDir(), "audit.jsonl") })
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := l.Append(ctx, benchRecord(l, i)); err != nil {
			b.Fatal(err)
		}
	}
}
