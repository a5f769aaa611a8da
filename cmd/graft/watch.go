package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/graft-sh/graft/sdk"
)

// eventView is one event as -o json (one line each) and -o yaml show it.
type eventView struct {
	Revision    int64   `json:"revision"`
	Type        string  `json:"type"`
	Path        string  `json:"path"`
	Author      string  `json:"author,omitempty"`
	Time        string  `json:"time,omitempty"`
	Size        int64   `json:"size,omitempty"`
	Value       *string `json:"value,omitempty"`
	ValueBase64 *string `json:"value_base64,omitempty"`
}

func (a *app) watchCmd() *cobra.Command {
	var (
		fromRevision int64
		keysOnly     bool
		values       bool
	)
	cmd := &cobra.Command{
		Use:   "watch [PREFIX]",
		Short: "Print the changes under a prefix as they happen",
		Long: `Print one line per change under PREFIX (default /) until interrupted:
"REV put PATH AUTHOR" or "REV delete PATH AUTHOR". Values are not shown unless
--values is given (they are then quoted). --from-revision N starts at
revision N, replaying the changes since; without it only changes from now
on are shown. -o json prints one JSON object per line. The watch survives
graftd restarts and resumes where it stopped; Ctrl-C ends it.`,
		Example: `  graft watch /dba
  graft watch /app/orders --from-revision 120 -o json`,
		Args: args(0, 1, "PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keysOnly && values {
				return errors.New("watch: --keys-only and --values exclude each other")
			}
			prefix := "/"
			if len(args) == 1 {
				prefix = trimPrefix(args[0])
			}
			// No --timeout: a watch runs until Ctrl-C.
			ctx := cmd.Context()
			c, err := a.Client(ctx, cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			var opts []sdk.WatchOption
			if !values {
				opts = append(opts, sdk.KeysOnly())
			}
			for resp := range c.Watch(ctx, prefix, fromRevision, opts...) {
				if resp.Err != nil {
					return resp.Err
				}
				for _, ev := range resp.Events {
					if err := a.printEvent(resp.Revision, ev, values); err != nil {
						return err
					}
				}
			}
			// The channel closes without an error only when ctx ended:
			// Ctrl-C, which is how a watch is meant to stop.
			return nil
		},
	}
	cmd.Flags().Int64Var(&fromRevision, "from-revision", 0, "first revision to show (0: changes from now on)")
	cmd.Flags().BoolVar(&keysOnly, "keys-only", false, "show paths without values (the default)")
	cmd.Flags().BoolVar(&values, "values", false, "show values too")
	return cmd
}

func (a *app) printEvent(revision int64, ev sdk.Event, values bool) error {
	e := ev.Entry
	switch a.Output {
	case "json", "yaml":
		v := eventView{Revision: revision, Type: ev.Type.String(), Path: e.Path}
		v.Author, v.Time = e.Author, jsonTime(e.Time)
		if ev.Type == sdk.EventPut {
			v.Size = e.Size
			if values {
				v.Value, v.ValueBase64 = viewValue(e.Value)
			}
		}
		if a.Output == "json" {
			return writeJSONLine(a.Stdout, v)
		}
		data, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.Stdout, "---\n%s", data)
		return err
	}
	var err error
	switch {
	case ev.Type == sdk.EventDelete && e.Author == "":
		_, err = fmt.Fprintf(a.Stdout, "%d delete %s\n", revision, e.Path) // its history was trimmed
	case ev.Type == sdk.EventDelete:
		_, err = fmt.Fprintf(a.Stdout, "%d delete %s %s\n", revision, e.Path, e.Author)
	case values:
		_, err = fmt.Fprintf(a.Stdout, "%d put %s %s %s\n", revision, e.Path, e.Author, strconv.Quote(string(e.Value)))
	default:
		_, err = fmt.Fprintf(a.Stdout, "%d put %s %s\n", revision, e.Path, e.Author)
	}
	return err
}

func writeJSONLine(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
