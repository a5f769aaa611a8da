package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

type keyringView struct {
	PrimaryKeyID uint32   `json:"primary_key_id"`
	KeyIDs       []uint32 `json:"key_ids"`
}

type sweepView struct {
	PrimaryKeyID uint32 `json:"primary_key_id"`
	Examined     int64  `json:"examined"`
	Reencrypted  int64  `json:"reencrypted"`
}

func (a *app) keyringCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keyring",
		Short: "Inspect graftd's encryption keys and re-encrypt under the newest (root only)",
		Long: `Values are encrypted with AES-256-GCM under keys from graftd's keyring.
'graftd keyring rotate' adds a key, which encrypts new writes from then on;
'graft keyring sweep' re-encrypts everything else under it so the old keys
can be retired. Key material never leaves graftd.`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show which keys graftd holds and which one encrypts new writes",
		Args:  args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				primary, ids, err := c.KeyringStatus(ctx)
				if err != nil {
					return err
				}
				return a.Emit(keyringView{PrimaryKeyID: primary, KeyIDs: ids}, func(w io.Writer) error {
					list := make([]string, len(ids))
					for i, id := range ids {
						list[i] = fmt.Sprint(id)
					}
					_, err := fmt.Fprintf(w, "primary key: %d\nkeys: %s\n", primary, strings.Join(list, ", "))
					return err
				})
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "sweep",
		Short: "Re-encrypt every stored value not yet under the primary key",
		Args:  args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, err := c.ReencryptSweep(ctx)
				if err != nil {
					return err
				}
				return a.Emit(sweepView(r), func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "re-encrypted %d of %d stored records; all are now under key %d\n", r.Reencrypted, r.Examined, r.PrimaryKeyID)
					return err
				})
			})
		},
	})
	return cmd
}
