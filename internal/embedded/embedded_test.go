package embedded_test

import (
	"testing"

	"github.com/graft-sh/graft/internal/embedded"
)

// The dev NATS syncs each stored message before acknowledging it, as the
// shipped deploy/nats.conf does: an acknowledged audit record survives a
// power loss.
func TestNATSSyncsEveryMessage(t *testing.T) {
	n, err := embedded.StartNATS(embedded.NATSConfig{Dir: t.TempDir(), InProcess: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if cfg := n.Server.JetStreamConfig(); cfg == nil || !cfg.SyncAlways {
		t.Fatalf("JetStream config %+v: want sync always", cfg)
	}
}
