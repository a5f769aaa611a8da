package main

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/graftd"
)

func newBreakGlassCmd() *cobra.Command {
	var (
		configFile string
		ttl        time.Duration
		reason     string
	)
	cmd := &cobra.Command{
		Use:   "break-glass --reason TEXT [--ttl 1h]",
		Short: "Mint a short-lived root token in an emergency (audited)",
		Long: `Mint a root token straight into etcd, for when no admin token is at hand
(the first admin of a new cluster, or a locked-out team). It needs graftd's
own configuration: the etcd and NATS it uses and its keyring file, so only
someone who already operates graftd can run it. The reason, the operator and
the token's accessor go to the audit log before the token exists; the token
expires after --ttl (at most 24h). Revoke it early with
"graft token revoke <accessor>".`,
		Args: cobra.NoArgs,
	}
	load := graftd.Flags(cmd.Flags())
	cmd.Flags().StringVar(&configFile, "config", os.Getenv("GRAFT_CONFIG"), "YAML configuration file (env GRAFT_CONFIG)")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the root token lives (at most 24h)")
	cmd.Flags().StringVar(&reason, "reason", "", "why; recorded in the audit log (required)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := load(configFile, os.LookupEnv)
		if err != nil {
			return err
		}
		operator := "unknown"
		if u, err := user.Current(); err == nil {
			operator = u.Username
		}
		if host, err := os.Hostname(); err == nil {
			operator += "@" + host
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
		defer cancel()
		token, err := graftd.BreakGlass(ctx, cfg, graftd.NewLogger(cfg, os.Stderr), ttl, reason, operator)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "root token valid for %s; this use is in the audit log\n", ttl)
		fmt.Fprintln(cmd.OutOrStdout(), token)
		return nil
	}
	return cmd
}
