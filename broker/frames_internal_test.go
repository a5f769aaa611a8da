package broker

import (
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// pgFrames finds the end of each message however the stream is cut into
// writes: one byte at a time, a header split, several messages at once.
func TestPGFramesFollowsMessages(t *testing.T) {
	var msgs [][]byte
	for _, m := range []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("a")}}},
		&pgproto3.DataRow{Values: [][]byte{make([]byte, 20000)}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	} {
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, b)
	}
	for _, size := range []int{1, 2, 3, 5, 7, 4096, 1 << 20} {
		f := &pgFrames{w: io.Discard}
		for i, m := range msgs {
			for len(m) > 0 {
				n := min(size, len(m))
				f.Write(m[:n])
				m = m[n:]
				if len(m) > 0 && f.between() {
					t.Fatalf("writes of %d: between messages inside message %d", size, i)
				}
			}
			if !f.between() {
				t.Fatalf("writes of %d: not between messages after message %d", size, i)
			}
		}
		if f.last != 'Z' {
			t.Errorf("writes of %d: last message %q, want Z", size, f.last)
		}
	}
	f := &pgFrames{w: io.Discard}
	var all []byte
	for _, m := range msgs {
		all = append(all, m...)
	}
	f.Write(all[:len(all)-1])
	if f.between() {
		t.Error("a stream cut one byte short is between messages")
	}
	f.Write(all[len(all)-1:])
	if !f.between() {
		t.Error("the whole stream is not between messages")
	}
}
