package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/graftd"
)

func newRootCmd() *cobra.Command {
	var configFile string
	cmd := &cobra.Command{
		Use:   "graftd",
		Short: "graftd serves graft's encrypted namespace store over gRPC",
		Long: `graftd serves graft's encrypted namespace store over gRPC.

Start it for development with everything embedded (etcd, NATS JetStream, a
generated keyring and root token, data in ./graft-data):

  graftd --dev

In production point it at etcd and NATS clusters:

  graftd --etcd-endpoints https://etcd-1:2379 --nats-url nats://nats-1:4222 \
         --keyring-file /etc/graft/keyring.json \
         --listen 0.0.0.0:7420 --tls-cert-file server.pem --tls-key-file server-key.pem

Every flag can also be set as GRAFT_<FLAG> in the environment or in a YAML
file given with --config (keys as in the flag names with _ for -).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
	}
	load := graftd.Flags(cmd.Flags())
	cmd.Flags().StringVar(&configFile, "config", os.Getenv("GRAFT_CONFIG"), "YAML configuration file (env GRAFT_CONFIG)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := load(configFile, os.LookupEnv)
		if err != nil {
			return err
		}
		return serve(cmd, cfg)
	}
	cmd.AddCommand(newKeyringCmd(), newBreakGlassCmd())
	return cmd
}

// serve runs graftd until SIGINT or SIGTERM, or until a part of it fails.
func serve(cmd *cobra.Command, cfg graftd.Config) error {
	log := graftd.NewLogger(cfg, os.Stderr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case sig := <-sigs:
			signal.Stop(sigs) // a second signal now kills the process at once
			log.Info("shutting down", "signal", sig.String())
			cancel()
		case <-ctx.Done():
		}
	}()
	d, err := graftd.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	if cfg.Dev {
		go func() {
			select {
			case <-d.Ready():
			case <-ctx.Done():
				return
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "graftd is running in dev mode (data in %s)\n\n", cfg.DataDir)
			fmt.Fprintf(out, "  export GRAFT_ADDR=%s\n", d.Addr())
			fmt.Fprintf(out, "  export GRAFT_TOKEN=%s\n\n", d.RootToken())
			fmt.Fprintf(out, "The root token is also in %s. Health: http://%s/readyz\n", d.RootTokenFile(), d.HTTPAddr())
		}()
	}
	return d.Run(ctx)
}
