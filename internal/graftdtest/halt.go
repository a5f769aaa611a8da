package graftdtest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/dbcred/leases"
)

// Halt is a point in graftd's work where a graftd process that
// StartProcessHalting runs stops dead, so that a test can kill it there
// and nowhere else.
type Halt string

// The points a graftd process can halt at.
const (
	// HaltBeforeCreateUser: an issue has written its lease, pending,
	// and has not made the lease's database user.
	HaltBeforeCreateUser Halt = "before-create-user"
	// HaltAfterCreateUser: an issue has made the lease's user and has
	// not confirmed the lease.
	HaltAfterCreateUser Halt = "after-create-user"
)

// haltedLine begins the line a graftd process prints when it halts,
// followed by where.
const haltedLine = "graftdtest: halted"

// StartProcessHalting is StartProcess, except that the graftd process
// halts where its work reaches at: it says so (WaitHalted) and that
// call goes no further, while the rest of graftd serves on, until the
// test kills it (Kill). A graftd started again (StartAgain) does not
// halt.
func StartProcessHalting(t testing.TB, at Halt, opts ...Option) *Graftd {
	t.Helper()
	switch at {
	case HaltBeforeCreateUser, HaltAfterCreateUser:
	default:
		t.Fatalf("graftdtest: no halt %q", at)
	}
	return startProcess(t, at, opts)
}

// WaitHalted waits until the graftd process that StartProcessHalting
// started has halted, and fails the test after timeout.
func (g *Graftd) WaitHalted(t testing.TB, timeout time.Duration) {
	t.Helper()
	if g.proc == nil || g.proc.halted == nil {
		t.Fatal("graftdtest: WaitHalted needs a graftd that StartProcessHalting started")
	}
	select {
	case <-g.proc.halted:
	case <-time.After(timeout):
		t.Fatalf("graftdtest: graftd did not halt at %s within %s", g.proc.halt, timeout)
	}
}

// open is, in the graftd process, the lease manager's Open: the drivers
// it opens halt at h.
func (h Halt) open(ctx context.Context, driver, dsn string) (dbcred.Dynamic, error) {
	d, err := leases.OpenDriver(ctx, driver, dsn)
	if err != nil {
		return nil, err
	}
	return haltingDriver{Dynamic: d, at: h}, nil
}

// haltingDriver is a driver whose CreateUser halts at before or after
// it makes the user: it tells the test and blocks until the process is
// killed.
type haltingDriver struct {
	dbcred.Dynamic
	at Halt
}

func (d haltingDriver) CreateUser(ctx context.Context, statements []string, u dbcred.NewUser) error {
	if d.at == HaltAfterCreateUser {
		if err := d.Dynamic.CreateUser(ctx, statements, u); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stdout, "%s %s %s\n", haltedLine, d.at, u.Name)
	select {}
}
