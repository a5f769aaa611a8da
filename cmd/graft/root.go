package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/graft-sh/graft/internal/cmdline"
)

// app is one invocation of graft: its streams and its global settings
// (cmdline.Globals: address, token, TLS, output). Commands reach graftd
// through its WithClient.
type app struct {
	cmdline.Globals
	stdin      io.Reader
	stderr     io.Writer
	isTerminal func(io.Writer) bool
}

// run executes graft with args, its own streams and environment, and
// returns the process exit code. Every error ends up as one line
// "graft: <message>" on stderr. Tests call it as main does.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{Globals: cmdline.Globals{Stdout: stdout, Getenv: getenv}, stdin: stdin, stderr: stderr, isTerminal: isTerminal}
	cmd := a.rootCmd()
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		var code exitCode
		if errors.As(err, &code) {
			return int(code)
		}
		fmt.Fprintln(stderr, "graft: "+a.ErrorLine(err))
		return 1
	}
	return 0
}

// exitCode ends graft with that code and no message: the command has
// already printed its answer (graft policy check --exit-code).
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// rootCmd builds the command tree bound to a.
func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "graft",
		Short: "Read, write, watch and restore values in graft",
		Long: `graft is the command-line client of graftd, which stores configuration and
secrets in a namespace tree (/dba/..., /app/<name>/...), encrypted, with
history, point-in-time restore and compare-and-swap.

Start a local graftd with 'make run' (graftd --dev), then:
  export GRAFT_TOKEN=$(cat graft-data/root-token)
  graft put /app/demo/greeting hello
  graft get /app/demo/greeting`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	a.Bind(root)
	root.SetOut(a.Stdout)
	root.SetErr(a.stderr)
	root.SetIn(a.stdin)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())
	})

	root.AddCommand(
		a.putCmd(),
		a.getCmd(),
		a.lsCmd(),
		a.historyCmd(),
		a.restoreCmd(),
		a.rmCmd(),
		a.watchCmd(),
		a.keyringCmd(),
		a.tokenCmd(),
		a.policyCmd(),
		a.auditCmd(),
		a.shareCmd(),
		a.rulesCmd(),
		a.unshareCmd(),
		a.statusCmd(),
		a.agentsCmd(),
		a.rolloutCmd(),
		a.rotationCmd(),
		a.dbcredCmd(),
		a.leaseCmd(),
		a.versionCmd(),
	)
	return root
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// trimPrefix accepts one trailing slash on a prefix as a convenience:
// `graft watch /dba/` is `graft watch /dba`. Everything else is left for
// graftd to validate.
func trimPrefix(p string) string {
	if len(p) > 1 && strings.HasSuffix(p, "/") {
		return p[:len(p)-1]
	}
	return p
}

// args is cmdline.Args, as every command's argument check.
var args = cmdline.Args
