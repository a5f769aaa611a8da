package sdk_test

import (
	"errors"
	"net"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/sdk"
)

// scriptedKV is a KVService whose Watch plays one scripted stream per
// call, to drive the SDK through what a real graftd rarely does on cue:
// replays after a reconnect, progress notices, streams ending without a
// status, and the different ways a stream breaks.
type scriptedKV struct {
	graftv1.UnimplementedKVServiceServer
	mu      sync.Mutex
	streams []watchScript
	starts  []int64 // start_revision of each call, in order
}

type watchScript struct {
	msgs []*graftv1.WatchResponse
	end  error // nil ends the stream cleanly (the client sees io.EOF)
}

func (s *scriptedKV) Watch(req *graftv1.WatchRequest, stream graftv1.KVService_WatchServer) error {
	s.mu.Lock()
	s.starts = append(s.starts, req.GetStartRevision())
	if len(s.streams) == 0 {
		s.mu.Unlock()
		return status.Error(codes.Internal, "script exhausted")
	}
	script := s.streams[0]
	s.streams = s.streams[1:]
	s.mu.Unlock()
	for _, m := range script.msgs {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	return script.end
}

func created(rev int64) *graftv1.WatchResponse {
	return &graftv1.WatchResponse{Created: true, Revision: rev}
}

func progress(rev int64) *graftv1.WatchResponse { return &graftv1.WatchResponse{Revision: rev} }

func puts(rev int64, paths ...string) *graftv1.WatchResponse {
	m := &graftv1.WatchResponse{Revision: rev}
	for _, p := range paths {
		m.Events = append(m.Events, &graftv1.Event{Type: graftv1.EventType_EVENT_TYPE_PUT, Entry: &graftv1.Entry{Path: p, Revision: rev}})
	}
	return m
}

func TestWatchResumeScript(t *testing.T) {
	kv := &scriptedKV{streams: []watchScript{
		// Starts after 10; delivers 11 and 12; graftd goes away.
		{msgs: []*graftv1.WatchResponse{created(10), puts(11, "/s/a"), puts(12, "/s/b")},
			end: status.Error(codes.Unavailable, "graftd is shutting down")},
		// Resumed at 13, but replays 11 and 12, then 13; a progress notice
		// moves the resume point past 14, which had nothing under /s.
		{msgs: []*graftv1.WatchResponse{created(12), puts(11, "/s/a"), puts(12, "/s/b"), puts(13, "/s/c"), progress(14)},
			end: nil},
		// A stream reset.
		{msgs: []*graftv1.WatchResponse{created(14), puts(15, "/s/d", "/s/e")},
			end: status.Error(codes.Internal, "stream reset")},
		// Canceled by the server side, not by the caller.
		{msgs: []*graftv1.WatchResponse{created(15)},
			end: status.Error(codes.Canceled, "server canceled")},
		// Fails before confirming: retried.
		{end: status.Error(codes.Unavailable, "not ready")},
		// Something retrying cannot fix.
		{msgs: []*graftv1.WatchResponse{created(15), puts(16, "/s/f")},
			end: status.Error(codes.OutOfRange, "revision 17 has been compacted; the oldest available is 20")},
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	graftv1.RegisterKVServiceServer(srv, kv)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	c := newClient(t, ln.Addr().String(), "token")
	ch := c.Watch(t.Context(), "/s", 0)
	var got []watchEvent
	var end error
	for r := range ch {
		if r.Err != nil {
			end = r.Err
			continue
		}
		for _, ev := range r.Events {
			got = append(got, watchEvent{r.Revision, ev.Type, ev.Entry.Path, ""})
		}
	}
	want := []watchEvent{
		{11, sdk.EventPut, "/s/a", ""},
		{12, sdk.EventPut, "/s/b", ""},
		{13, sdk.EventPut, "/s/c", ""},
		{15, sdk.EventPut, "/s/d", ""},
		{15, sdk.EventPut, "/s/e", ""},
		{16, sdk.EventPut, "/s/f", ""},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events = %+v\nwant %+v", got, want)
	}
	if !errors.Is(end, sdk.ErrOutOfRange) || end.Error() != "revision 17 has been compacted; the oldest available is 20" {
		t.Fatalf("watch ended with %v, want the OutOfRange error as sent", end)
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if wantStarts := []int64{0, 13, 15, 16, 16, 16}; !slices.Equal(kv.starts, wantStarts) {
		t.Fatalf("start revisions asked = %v, want %v", kv.starts, wantStarts)
	}
}
