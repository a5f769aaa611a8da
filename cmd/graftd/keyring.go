package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/keyring"
)

func newKeyringCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keyring",
		Short: "Create and rotate the keyring that encrypts values at rest",
	}
	var file, dataDir string
	resolve := func() string {
		if file != "" {
			return file
		}
		return filepath.Join(dataDir, "keyring.json")
	}
	cmd.PersistentFlags().StringVar(&file, "keyring-file", "", "the keyring file (default <data-dir>/keyring.json)")
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", "./graft-data", "graftd's data directory, where --dev keeps its keyring")

	cmd.AddCommand(&cobra.Command{
		Use:   "init",
		Short: "Create a new keyring file with one key (mode 0600)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := resolve()
			if err := keyring.CreateFile(path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created %s with key 1\n", path)
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "rotate",
		Short: "Add a new key and make it the one that encrypts new writes",
		Long: `Add a new key to the keyring file and make it primary. Old keys stay, so
every stored value remains readable. A running graftd notices the change
within seconds; then run "graft keyring sweep" to re-encrypt stored values
with the new key. With several graftd replicas, give every replica the new
keyring file before sweeping.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := resolve()
			id, err := keyring.RotateFile(path)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added key %d to %s; it now encrypts new writes\nnext: `graft keyring sweep` re-encrypts stored values with it\n", id, path)
			return nil
		},
	})
	return cmd
}
