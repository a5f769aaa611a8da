// Command graft-bench measures graft: see `graft-bench --help`. It is a
// binary of its own because, without --addr, it starts a graftd in dev
// mode inside itself, and the graft CLI must not carry the server.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
