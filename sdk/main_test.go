package sdk_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/graft-sh/graft/graftd"
)

func TestMain(m *testing.M) { os.Exit(runWithExampleServer(m)) }

// runWithExampleServer starts one graftd for the Examples, which have no
// *testing.T to hand to graftdtest.Start, and passes its address and token
// to them as GRAFT_ADDR and GRAFT_TOKEN, the way a deployed service gets
// them. Tests start their own graftd with graftdtest.Start.
func runWithExampleServer(m *testing.M) int {
	dir, err := os.MkdirTemp("", "graft-sdk-examples-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cfg := graftd.DevConfig(dir)
	d, err := graftd.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start graftd for the examples:", err)
		return 1
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	}()
	os.Setenv("GRAFT_ADDR", d.Addr())
	os.Setenv("GRAFT_TOKEN", cfg.DevRootToken)
	return m.Run()
}
