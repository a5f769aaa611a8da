package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The CLI links the SDK and the generated API, never the server: no
// graftd package, no etcd and no NATS. (graft-bench, which can start a
// graftd of its own, is a binary of its own for this reason.)
func TestCLILinksNoServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/graft-sh/graft/server", "github.com/graft-sh/graft/store", "github.com/graft-sh/graft/acl",
		"github.com/graft-sh/graft/replicator", "github.com/graft-sh/graft/audit", "github.com/graft-sh/graft/internal/daemon",
		"go.etcd.io/etcd/", "github.com/nats-io/",
	}
	for dep := range strings.Lines(string(out)) {
		dep = strings.TrimSpace(dep)
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, strings.TrimSuffix(f, "/")+"/") {
				t.Errorf("graft links %s", dep)
			}
		}
	}
}
