package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

type deletedView struct {
	Path     string `json:"path"`
	Revision int64  `json:"revision"`
}

func (a *app) rmCmd() *cobra.Command {
	var (
		ifRevision int64
		force      bool
	)
	cmd := &cobra.Command{
		Use:   "rm PATH",
		Short: "Delete a value (its history is kept)",
		Long: `Delete the value at PATH. Its history is kept: 'graft history PATH' still
lists it and 'graft restore PATH --revision N' brings it back. With
--if-revision the delete happens only if PATH is still at that revision.

A path that replication rules copy elsewhere is deleted only with --force
(the refusal lists the copies); its copies then follow their rule's
on-delete setting.`,
		Args: args(1, 1, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []sdk.WriteOption
			if cmd.Flags().Changed("if-revision") {
				opts = append(opts, sdk.IfRevision(ifRevision))
			}
			if force {
				opts = append(opts, sdk.Force())
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, err := c.Delete(ctx, args[0], opts...)
				if err != nil {
					return err
				}
				return a.Emit(deletedView{Path: args[0], Revision: r}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "%s deleted at revision %d\n", args[0], r)
					return err
				})
			})
		},
	}
	cmd.Flags().Int64Var(&ifRevision, "if-revision", 0, "delete only if PATH is at this revision")
	cmd.Flags().BoolVar(&force, "force", false, "delete even though replication rules copy PATH elsewhere")
	return cmd
}
