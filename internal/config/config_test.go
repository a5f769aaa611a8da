package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/graft-sh/graft/internal/config"
)

type settings struct {
	Name    string        `yaml:"name"`
	Count   int           `yaml:"count"`
	Wait    time.Duration `yaml:"wait"`
	On      bool          `yaml:"on"`
	Servers []string      `yaml:"servers"`
	Nested  struct {
		Mode string `yaml:"mode"`
	} `yaml:"nested"`
}

var table = config.Table[settings]{
	EnvPrefix: "TEST_",
	Defaults:  func() settings { return settings{Name: "default", Count: 1, Wait: time.Second} },
	Options: []config.Option[settings]{
		config.Flag("name", "a name", func(s *settings) any { return &s.Name }),
		config.Flag("count", "a count", func(s *settings) any { return &s.Count }),
		config.Flag("wait", "a wait", func(s *settings) any { return &s.Wait }),
		config.Flag("on", "a switch", func(s *settings) any { return &s.On }),
		config.Flag("servers", "a list", func(s *settings) any { return &s.Servers }),
		config.Flag("nested-mode", "a nested setting", func(s *settings) any { return &s.Nested.Mode }),
	},
}

func load(t *testing.T, yaml string, env map[string]string, args ...string) (settings, error) {
	t.Helper()
	file := ""
	if yaml != "" {
		file = filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	loader := table.Bind(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return loader(file, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

func TestLayers(t *testing.T) {
	got, err := load(t, "count: 5\nwait: 3s\nnested:\n  mode: file\nservers: [a]\n",
		map[string]string{"TEST_WAIT": "4s", "TEST_NESTED_MODE": "env", "TEST_SERVERS": "b, c,"},
		"--nested-mode=flag")
	if err != nil {
		t.Fatal(err)
	}
	want := settings{Name: "default", Count: 5, Wait: 4 * time.Second, Servers: []string{"b", "c"}}
	want.Nested.Mode = "flag"
	if got.Name != want.Name || got.Count != want.Count || got.Wait != want.Wait || got.Nested != want.Nested || strings.Join(got.Servers, ",") != "b,c" {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestEveryLoadProblemAtOnce(t *testing.T) {
	_, err := load(t, "cuont: 5\n", map[string]string{"TEST_COUNT": "many", "TEST_ON": "sure", "TEST_WAIT": "soon"})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"cuont", "TEST_COUNT", "whole number", "TEST_ON", "true or false", "TEST_WAIT", "duration such as 10s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestFlagHelpNamesTheVariable(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	table.Bind(fs)
	if u := fs.Lookup("nested-mode").Usage; u != "a nested setting (env TEST_NESTED_MODE)" {
		t.Fatalf("usage %q", u)
	}
	if d := fs.Lookup("wait").DefValue; d != "1s" {
		t.Fatalf("default shown as %q, want 1s", d)
	}
}

func TestProblems(t *testing.T) {
	var p config.Problems
	if err := p.Err(); err != nil {
		t.Fatalf("no problems: %v", err)
	}
	p.Add("--a %d: too big", 3)
	p.Add("--b is required")
	if got, want := p.Err().Error(), "invalid configuration:\n  - --a 3: too big\n  - --b is required"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// The problems of loading (unknown keys, bad variables) and of validating
// come in one list; a file that cannot be read at all stands alone.
func TestMergeKeepsEveryProblem(t *testing.T) {
	_, loadErr := load(t, "cuont: 5\n", map[string]string{"TEST_COUNT": "many"})
	var v config.Problems
	v.Add("--b is required")
	err := config.Merge(loadErr, v.Err())
	for _, want := range []string{"field cuont not found", "TEST_COUNT", "--b is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("merged error %v lacks %q", err, want)
		}
	}
	if err == nil || strings.Count(err.Error(), "invalid configuration") != 1 {
		t.Errorf("merged error is not one list:\n%v", err)
	}
	fatal := errors.New("config file: open x: no such file or directory")
	if got := config.Merge(fatal, v.Err()); got != fatal {
		t.Errorf("Merge of an unreadable file = %v, want it alone", got)
	}
	if got := config.Merge(nil, nil); got != nil {
		t.Errorf("Merge(nil, nil) = %v", got)
	}
}
