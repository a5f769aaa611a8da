// Command graft-agent runs next to an application: it renders the
// application's values from graft into files and reloads the application
// when they change. See `graft-agent --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/agent"
)

func main() {
	err := newRootCmd(os.Stdout, os.Stderr).Execute()
	var code exitStatus
	if errors.As(err, &code) {
		os.Exit(int(code))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "graft-agent: %v\n", err)
		os.Exit(1)
	}
}

// exitStatus ends graft-agent with the code of the application it ran.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	var configFile string
	var once, dryRun bool
	cmd := &cobra.Command{
		Use:   "graft-agent --config agent.yaml",
		Short: "graft-agent renders an application's values from graft into files and reloads it",
		Long: `graft-agent runs next to an application (a sidecar or a host daemon). It reads
the application's tree in graft (/app/<app>), renders its templates into files,
and after any file changed runs the reload actions in order (a signal to a
pidfile's process, an HTTP call, a command), then waits for the health check.
It follows every change with one watch stream and never exits because graftd
is away: the last good files stay and the application keeps running.

Settings come from defaults, then the YAML file given with --config, then
GRAFT_AGENT_<FLAG> variables, then flags; templates, reload, health and wait
are set in the file. Unknown keys are refused and every problem is reported
at once.

  graft-agent --config agent.yaml            # render, reload, follow
  graft-agent --config agent.yaml --once     # render and exit (init containers, CI)
  graft-agent --config agent.yaml --dry-run  # which files would change, never the values`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
	}
	load := agent.Flags(cmd.Flags())
	cmd.Flags().StringVar(&configFile, "config", os.Getenv("GRAFT_AGENT_CONFIG"), "YAML configuration file (env GRAFT_AGENT_CONFIG)")
	cmd.Flags().BoolVar(&once, "once", false, "render once and exit; exit 1 if a template failed")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show which files would change and which keys they read, write nothing, exit")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := load(configFile, os.LookupEnv)
		if err != nil {
			return err
		}
		cfg.Once, cfg.DryRun = once, dryRun
		log := newLogger(cfg.LogLevel, stderr)
		ctx := context.Background()
		sigs := make(chan os.Signal, 1)
		if cfg.Exec != nil && !once && !dryRun {
			// The application gets the signals; the agent exits with it.
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		} else {
			var stop context.CancelFunc
			ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
			defer stop()
		}
		a, err := agent.New(ctx, cfg, log, stdout)
		if err != nil {
			return err
		}
		a.ForwardSignals(sigs)
		if addr := a.Addr(); addr != "" {
			log.Info("graft-agent started", "app", cfg.App, "server", cfg.Server, "endpoints", "http://"+addr)
		} else if !once && !dryRun {
			log.Info("graft-agent started", "app", cfg.App, "server", cfg.Server, "endpoints", "off (set listen: to serve /healthz, /readyz and /metrics)")
		}
		err = a.Run(ctx)
		var exit *agent.ExitError
		if errors.As(err, &exit) {
			return exitStatus(exit.Code)
		}
		if err != nil {
			return err
		}
		if !once && !dryRun {
			log.Info("graft-agent stopped")
		}
		return nil
	}
	return cmd
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}
