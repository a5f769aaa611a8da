package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/internal/cmdline"
)

// app is one invocation of graft-bench.
type app struct {
	cmdline.Globals
}

// run executes graft-bench with args and returns the exit code; every
// error ends up as one line "graft-bench: <message>" on stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{Globals: cmdline.Globals{Stdout: stdout, Getenv: getenv}}
	root := &cobra.Command{
		Use:   "graft-bench",
		Short: "Measure graft",
		Long: `graft-bench measures graft end to end and prints figures (-o json for
machines). Without --addr (or GRAFT_ADDR) it starts its own graftd in dev
mode in a temporary directory; with --addr it measures that one.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	a.Bind(root)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())
	})
	root.AddCommand(a.replicateCmd(), a.agentsCmd(), a.dbcredCmd(), a.brokerCmd())
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "graft-bench: "+a.ErrorLine(err))
		return 1
	}
	return 0
}
