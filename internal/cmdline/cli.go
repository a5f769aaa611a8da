// Package cmdline is what graft's command-line programs share: the settings
// that reach graftd (--addr, --token, --ca-file, --insecure, --timeout,
// and their GRAFT_* variables), the output formats (-o table, json, yaml)
// and the one-line error message every failure ends as. It links the SDK
// only, never the server.
package cmdline

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/graft-sh/graft/internal/tlsfiles"
	"github.com/graft-sh/graft/sdk"
)

// DefaultAddr is where graftd --dev listens.
const DefaultAddr = "127.0.0.1:7420"

// errNoToken is the whole message: it says where a token comes from.
const errNoToken = "no token: set GRAFT_TOKEN or pass --token (graftd --dev prints one and writes it to graft-data/root-token)"

// Globals are one invocation's connection and output settings. Bind
// registers them as persistent flags; Client connects with them.
type Globals struct {
	Stdout io.Writer
	Getenv func(string) string

	Addr     string
	Token    string
	CAFile   string
	Insecure bool
	Output   string
	Timeout  time.Duration

	// Secrets are arguments that may be tokens (graft token revoke's):
	// ErrorLine never prints them.
	Secrets []string

	// tokenFrom says where the token came from, for error messages.
	tokenFrom string
}

// Bind registers the settings as persistent flags of root and resolves
// them before any subcommand runs.
func (g *Globals) Bind(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&g.Addr, "addr", DefaultAddr, "graftd gRPC address host:port (env GRAFT_ADDR)")
	f.StringVar(&g.Token, "token", "", "bearer token (env GRAFT_TOKEN)")
	f.StringVar(&g.CAFile, "ca-file", "", "connect with TLS, trusting the CA certificates in this PEM file (env GRAFT_CA_FILE)")
	f.BoolVar(&g.Insecure, "insecure", false, "allow plaintext to a non-loopback address; the token crosses the network in the clear (env GRAFT_INSECURE)")
	f.StringVarP(&g.Output, "output", "o", "table", "output format: table, json or yaml")
	f.DurationVar(&g.Timeout, "timeout", 10*time.Second, "time limit for a call to graftd (0: none); watch has none")
	root.PersistentPreRunE = g.resolve
}

// resolve checks the settings and fills the ones not given on the command
// line from the environment. The token and TLS settings are read later, by
// Client, so that commands that do not call graftd (version, completion)
// work without them.
func (g *Globals) resolve(cmd *cobra.Command, _ []string) error {
	switch g.Output {
	case "table", "json", "yaml":
	default:
		return fmt.Errorf("invalid output format %q: use -o table, -o json or -o yaml", g.Output)
	}
	if g.Timeout < 0 {
		return fmt.Errorf("invalid --timeout %s: must not be negative", g.Timeout)
	}
	if !cmd.Flags().Changed("addr") {
		if v := g.Getenv("GRAFT_ADDR"); v != "" {
			g.Addr = v
		}
	}
	return nil
}

// Remote reports whether the user named a graftd (--addr or GRAFT_ADDR).
func (g *Globals) Remote(cmd *cobra.Command) bool {
	return cmd.Flags().Changed("addr") || g.Getenv("GRAFT_ADDR") != ""
}

// Client connects to graftd with the resolved settings. Close it.
func (g *Globals) Client(ctx context.Context, cmd *cobra.Command) (*sdk.Client, error) {
	flags := cmd.Flags()
	g.tokenFrom = "--token"
	if !flags.Changed("token") {
		g.Token, g.tokenFrom = g.Getenv("GRAFT_TOKEN"), "GRAFT_TOKEN"
	}
	g.Token = strings.TrimSpace(g.Token)
	if g.Token == "" {
		return nil, fmt.Errorf("%s", errNoToken)
	}
	if !flags.Changed("ca-file") {
		g.CAFile = g.Getenv("GRAFT_CA_FILE")
	}
	if !flags.Changed("insecure") {
		if v := g.Getenv("GRAFT_INSECURE"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("GRAFT_INSECURE=%q is not a boolean: use 1 or 0", v)
			}
			g.Insecure = b
		}
	}
	if _, _, err := net.SplitHostPort(g.Addr); err != nil {
		return nil, fmt.Errorf("invalid address %q: want host:port such as %s (--addr or GRAFT_ADDR)", g.Addr, DefaultAddr)
	}
	cfg := sdk.Config{Addr: g.Addr, Token: g.Token, Insecure: g.Insecure}
	tc, err := tlsfiles.Client(g.CAFile, "", "")
	if err != nil {
		return nil, err
	}
	cfg.TLS = tc
	return sdk.New(ctx, cfg)
}

// CallCtx bounds one call to graftd by --timeout.
func (g *Globals) CallCtx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	if g.Timeout > 0 {
		return context.WithTimeout(cmd.Context(), g.Timeout)
	}
	return context.WithCancel(cmd.Context())
}

// WithClient runs f with a client and a context bounded by --timeout.
func (g *Globals) WithClient(cmd *cobra.Command, f func(ctx context.Context, c *sdk.Client) error) error {
	ctx, cancel := g.CallCtx(cmd)
	defer cancel()
	c, err := g.Client(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	return f(ctx, c)
}

// Emit writes v as JSON or YAML when -o asks for it, otherwise calls
// table. YAML is made from the JSON form so both use the same field names.
func (g *Globals) Emit(v any, table func(w io.Writer) error) error {
	switch g.Output {
	case "json":
		enc := json.NewEncoder(g.Stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(v)
	case "yaml":
		data, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = g.Stdout.Write(data)
		return err
	}
	return table(g.Stdout)
}

// Args checks the number of positional arguments and names what is
// expected, with the usage line, when it is wrong.
func Args(min, max int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		// The program's name starts the line already ("graft: get: ...").
		name := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
		switch {
		case len(args) < min:
			return fmt.Errorf("%s: missing %s (usage: %s)", name, what, cmd.UseLine())
		case len(args) > max:
			// The extra arguments are not echoed: an unquoted value split
			// by the shell would land in the error line.
			return fmt.Errorf("%s: %d arguments given, at most %d accepted (usage: %s)", name, len(args), max, cmd.UseLine())
		}
		return nil
	}
}
