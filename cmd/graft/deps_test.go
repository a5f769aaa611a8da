package main

import (
	"testing"

	"github.com/graft-sh/graft/internal/testenv"
)

// The CLI links the SDK and the generated API, never the server: no
// graftd package, no etcd and no NATS. (graft-bench, which can start a
// graftd of its own, is a binary of its own for this reason.)
func TestCLILinksNoServer(t *testing.T) { testenv.LinksNoServer(t, "graft") }
