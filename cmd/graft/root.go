package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/graft-sh/graft/sdk"
)

const defaultAddr = "127.0.0.1:7420"

// errNoToken is the whole message: it says where a token comes from.
const errNoToken = "no token: set GRAFT_TOKEN or pass --token (graftd --dev prints one and writes it to graft-data/root-token)"

// app is one invocation of graft: its streams, environment and global
// flags. Commands reach graftd through app.client.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	isTerminal     func(io.Writer) bool

	addr     string
	token    string
	caFile   string
	insecure bool
	output   string
	timeout  time.Duration

	// secrets are arguments that may be tokens (graft token revoke's):
	// errorLine never prints them.
	secrets []string
}

// run executes graft with args, its own streams and environment, and
// returns the process exit code. Every error ends up as one line
// "graft: <message>" on stderr. Tests call it as main does.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv, isTerminal: isTerminal}
	cmd := a.rootCmd()
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		var code exitCode
		if errors.As(err, &code) {
			return int(code)
		}
		fmt.Fprintln(stderr, "graft: "+a.errorLine(err))
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
		SilenceErrors:     true,
		SilenceUsage:      true,
		PersistentPreRunE: a.resolveGlobals,
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetIn(a.stdin)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())
	})

	f := root.PersistentFlags()
	f.StringVar(&a.addr, "addr", defaultAddr, "graftd gRPC address host:port (env GRAFT_ADDR)")
	f.StringVar(&a.token, "token", "", "bearer token (env GRAFT_TOKEN)")
	f.StringVar(&a.caFile, "ca-file", "", "connect with TLS, trusting the CA certificates in this PEM file (env GRAFT_CA_FILE)")
	f.BoolVar(&a.insecure, "insecure", false, "allow plaintext to a non-loopback address; the token crosses the network in the clear (env GRAFT_INSECURE)")
	f.StringVarP(&a.output, "output", "o", "table", "output format: table, json or yaml")
	f.DurationVar(&a.timeout, "timeout", 10*time.Second, "time limit for a call to graftd (0: none); watch has none")

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
		a.benchCmd(),
		a.versionCmd(),
	)
	return root
}

// resolveGlobals checks the global flags and fills the ones not given on
// the command line from the environment. The token and TLS settings are
// read later, by client, so that commands that do not call graftd
// (version, completion) work without them.
func (a *app) resolveGlobals(cmd *cobra.Command, _ []string) error {
	switch a.output {
	case "table", "json", "yaml":
	default:
		return fmt.Errorf("invalid output format %q: use -o table, -o json or -o yaml", a.output)
	}
	if a.timeout < 0 {
		return fmt.Errorf("invalid --timeout %s: must not be negative", a.timeout)
	}
	flags := cmd.Flags()
	if !flags.Changed("addr") {
		if v := a.getenv("GRAFT_ADDR"); v != "" {
			a.addr = v
		}
	}
	return nil
}

// client connects to graftd with the resolved settings. Close it.
func (a *app) client(ctx context.Context, cmd *cobra.Command) (*sdk.Client, error) {
	flags := cmd.Flags()
	if !flags.Changed("token") {
		a.token = a.getenv("GRAFT_TOKEN")
	}
	a.token = strings.TrimSpace(a.token)
	if a.token == "" {
		return nil, fmt.Errorf("%s", errNoToken)
	}
	if !flags.Changed("ca-file") {
		a.caFile = a.getenv("GRAFT_CA_FILE")
	}
	if !flags.Changed("insecure") {
		if v := a.getenv("GRAFT_INSECURE"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("GRAFT_INSECURE=%q is not a boolean: use 1 or 0", v)
			}
			a.insecure = b
		}
	}
	if _, _, err := net.SplitHostPort(a.addr); err != nil {
		return nil, fmt.Errorf("invalid address %q: want host:port such as %s (--addr or GRAFT_ADDR)", a.addr, defaultAddr)
	}
	cfg := sdk.Config{Addr: a.addr, Token: a.token, Insecure: a.insecure}
	if a.caFile != "" {
		pem, err := os.ReadFile(a.caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", a.caFile)
		}
		cfg.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return sdk.New(ctx, cfg)
}

// callCtx bounds one call to graftd by --timeout.
func (a *app) callCtx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	if a.timeout > 0 {
		return context.WithTimeout(cmd.Context(), a.timeout)
	}
	return context.WithCancel(cmd.Context())
}

// withClient runs f with a client and a context bounded by --timeout.
func (a *app) withClient(cmd *cobra.Command, f func(ctx context.Context, c *sdk.Client) error) error {
	ctx, cancel := a.callCtx(cmd)
	defer cancel()
	c, err := a.client(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	return f(ctx, c)
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

// args checks the number of positional arguments and names what is
// expected, with the usage line, when it is wrong.
func args(min, max int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < min:
			return fmt.Errorf("%s: missing %s (usage: %s)", cmd.CommandPath(), what, cmd.UseLine())
		case len(args) > max:
			// The extra arguments are not echoed: an unquoted value split
			// by the shell would land in the error line.
			return fmt.Errorf("%s: %d arguments given, at most %d accepted (usage: %s)", cmd.CommandPath(), len(args), max, cmd.UseLine())
		}
		return nil
	}
}
