package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

type versionView struct {
	Version string `json:"version"`
	Go      string `json:"go"`
	Commit  string `json:"commit,omitempty"`
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print graft's version",
		Args:  args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := buildVersion()
			return a.Emit(v, func(w io.Writer) error {
				line := fmt.Sprintf("graft %s (%s", v.Version, v.Go)
				if v.Commit != "" {
					line += ", commit " + v.Commit
				}
				_, err := fmt.Fprintln(w, line+")")
				return err
			})
		},
	}
}

// buildVersion reads the module version and VCS revision Go recorded in
// the binary: a release installed with go install has a version, a local
// build is "dev".
func buildVersion() versionView {
	v := versionView{Version: "dev", Go: runtime.Version()}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if m := info.Main.Version; m != "" && m != "(devel)" {
		v.Version = m
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			v.Commit = s.Value
			if len(v.Commit) > 12 {
				v.Commit = v.Commit[:12]
			}
		}
	}
	return v
}
