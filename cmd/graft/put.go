package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/sdk"
)

// maxInput bounds what put reads from a file or stdin. graftd's own limit
// is far lower (256 KiB by default) and reports itself; this only stops an
// endless stream from filling memory first.
const maxInput = 16 << 20

func (a *app) putCmd() *cobra.Command {
	var file string
	var ifRevision int64
	cmd := &cobra.Command{
		Use:   "put PATH [VALUE]",
		Short: "Write a value",
		Long: `Write a value at PATH, given as an argument or read with --file (--file -
reads stdin). With --if-revision the write is a compare-and-swap: it happens
only if PATH is still at that revision (0: only if PATH does not exist yet).

A value given as an argument lands in your shell history; prefer --file for
secrets.`,
		Example: `  graft put /dba/orders/postgres/user orders-blue
  graft put /dba/orders/postgres/password --file password.txt
  pwgen 32 1 | graft put /dba/orders/postgres/password --file -
  graft put /dba/orders/postgres/user orders-green --if-revision 41`,
		Args: args(1, 2, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			value, err := a.putValue(args[1:], file, cmd.Flags().Changed("file"))
			if err != nil {
				return err
			}
			var opts []sdk.WriteOption
			if cmd.Flags().Changed("if-revision") {
				opts = append(opts, sdk.IfRevision(ifRevision))
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				e, err := c.Put(ctx, path, value, opts...)
				if err != nil {
					return err
				}
				return a.Emit(viewEntry(e, false), func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "%s revision %d\n", e.Path, e.Revision)
					return err
				})
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "read the value from this file; - reads stdin")
	cmd.Flags().Int64Var(&ifRevision, "if-revision", 0, "write only if PATH is at this revision (0: only if it does not exist)")
	return cmd
}

// putValue returns the value from the argument or from --file.
func (a *app) putValue(args []string, file string, fileSet bool) ([]byte, error) {
	switch {
	case len(args) == 1 && fileSet:
		return nil, errors.New("put: give the value as an argument or with --file, not both")
	case len(args) == 1:
		return []byte(args[0]), nil
	case !fileSet:
		return nil, errors.New("put: no value: give VALUE, --file FILE, or --file - to read stdin")
	case file == "":
		return nil, errors.New("put: --file needs a file name, or - to read stdin")
	}
	var r io.Reader = a.stdin
	name := "stdin"
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("put: %w", err)
		}
		defer f.Close()
		r, name = f, file
	}
	data, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, fmt.Errorf("put: read %s: %w", name, err)
	}
	if len(data) > maxInput {
		return nil, fmt.Errorf("put: %s holds more than %d MiB; graftd values are far smaller", name, maxInput>>20)
	}
	return data, nil
}
