package graftd_test

import (
	"os"
	"testing"

	"github.com/graft-sh/graft/internal/graftdtest"
)

// TestMain lets this test binary be the graftd process that
// graftdtest.StartProcess runs.
func TestMain(m *testing.M) {
	graftdtest.Main()
	os.Exit(m.Run())
}
