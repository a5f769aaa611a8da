package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/graft-sh/graft/sdk"
)

// maxInput bounds what put reads from a file or stdin. graftd's own limit
// is far lower (256 KiB by default) and reports itself; this only stops an
// endless stream from filling memory first.
const maxInput = 16 << 20

func (a *app) putCmd() *cobra.Command {
	var file string
	var ifRevision int64
	var sets, setFiles []string
	cmd := &cobra.Command{
		Use:   "put PATH [VALUE]",
		Short: "Write a value",
		Long: `Write a value at PATH, given as an argument, read with --file, or read from
standard input when no value is given or the value is - (as etcdctl and
vault do; --file - too). Standard input is read whole, newlines included;
an empty one is refused. To store a literal "-", put it in a file. With
--if-revision the write is a compare-and-swap: it happens only if PATH is
still at that revision (0: only if PATH does not exist yet).

With --set and --set-file, PATH is a tree and each KEY (relative to it) gets
its value, all in one transaction: every value commits at one revision or
none does, so no reader, replicated copy or agent sees a database user
without its password. Up to 16 values; you need write on each path.

A value given as an argument lands in your shell history; prefer standard
input, --file or --set-file for secrets.`,
		Example: `  graft put /dba/orders/postgres/user orders-blue
  graft put /dba/orders/postgres/password --file password.txt
  pwgen 32 1 | graft put /dba/orders/postgres/password
  pwgen 32 1 | graft put /dba/orders/postgres/password -
  graft put /dba/orders/postgres/user orders-green --if-revision 41
  graft put /dba/orders/postgres --set user=orders-green --set-file password=green.txt`,
		Args: args(1, 2, "PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if len(sets)+len(setFiles) > 0 {
				if len(args) > 1 || cmd.Flags().Changed("file") || cmd.Flags().Changed("if-revision") {
					return errors.New("put: --set and --set-file write a tree; give no VALUE, --file or --if-revision with them")
				}
				values, err := a.treeValues(sets, setFiles)
				if err != nil {
					return err
				}
				return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
					return a.putTree(ctx, c, path, values)
				})
			}
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
	cmd.Flags().StringArrayVar(&sets, "set", nil, "KEY=VALUE below PATH, written with the others in one transaction (repeatable)")
	cmd.Flags().StringArrayVar(&setFiles, "set-file", nil, "KEY=FILE: the value of KEY below PATH read from FILE (repeatable)")
	return cmd
}

// putValue returns the value from the argument, from --file, or from
// standard input: with no value, or with the value -, as etcdctl and vault
// read it.
func (a *app) putValue(args []string, file string, fileSet bool) ([]byte, error) {
	switch {
	case len(args) == 1 && fileSet:
		return nil, errors.New("put: give the value as an argument or with --file, not both")
	case len(args) == 1 && args[0] != "-":
		return []byte(args[0]), nil
	case len(args) == 1 || !fileSet:
		if readerIsTerminal(a.stdin) {
			fmt.Fprintln(a.stderr, "graft: reading the value from standard input; end it with Ctrl-D")
		}
		data, err := a.readValue(a.stdin, "stdin")
		if err == nil && len(data) == 0 && len(args) == 0 {
			return nil, errors.New("put: no value: standard input was empty; give VALUE, --file FILE, or pipe the value in")
		}
		return data, err
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
	return a.readValue(r, name)
}

// readValue reads a whole value, bounded.
func (a *app) readValue(r io.Reader, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, fmt.Errorf("put: read %s: %w", name, err)
	}
	if len(data) > maxInput {
		return nil, fmt.Errorf("put: %s holds more than %d MiB; graftd values are far smaller", name, maxInput>>20)
	}
	return data, nil
}

// readerIsTerminal reports whether r is a terminal (a person, not a pipe).
func readerIsTerminal(r io.Reader) bool {
	f, ok := r.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
