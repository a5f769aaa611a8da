package main

import (
	"bytes"
	"context"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

func (a *app) getCmd() *cobra.Command {
	var revision int64
	cmd := &cobra.Command{
		Use:   "get PATH",
		Short: "Read a value",
		Long: `Print the value at PATH exactly as stored, byte for byte, so that
'graft get PATH > file' round-trips (a newline is added only on a terminal,
when the value lacks one). -o json and -o yaml add the revision, author,
time and origin; the value is shown as text when it is UTF-8, otherwise as
value_base64. --revision reads an older version kept in history.`,
		Example: `  graft get /app/orders/replicated/postgres/password
  graft get /app/orders/replicated/postgres/password -o json
  graft get /app/orders/replicated/postgres/password --revision 41`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []sdk.GetOption
			if revision != 0 {
				opts = append(opts, sdk.AtRevision(revision))
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				e, err := c.Get(ctx, args[0], opts...)
				if err != nil {
					return err
				}
				return a.Emit(viewEntry(e, true), func(w io.Writer) error {
					if _, err := w.Write(e.Value); err != nil {
						return err
					}
					if a.isTerminal(w) && !bytes.HasSuffix(e.Value, []byte("\n")) {
						_, err = io.WriteString(w, "\n")
					}
					return err
				})
			})
		},
	}
	cmd.Flags().Int64Var(&revision, "revision", 0, "read the version written at this revision (see graft history)")
	return cmd
}
