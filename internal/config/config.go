// Package config builds a program's configuration from one table of
// options: the defaults, then a YAML file, then environment variables, then
// the flags the user set, each layer overriding the one before. Unknown
// YAML keys are refused, and every problem found while loading is reported
// together, as is every problem Problems collects while validating. graftd
// and graft-agent both read their configuration this way.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// Option binds one setting of a T to its flag and environment variable.
// Field returns a pointer to the setting inside a T: *bool, *string, *int,
// *time.Duration or *[]string. Its YAML key is the field's yaml tag.
type Option[T any] struct {
	Flag  string
	Usage string
	Field func(*T) any
}

// Flag returns the option for the setting field points to, with its flag
// name and help text.
func Flag[T any](flag, usage string, field func(*T) any) Option[T] {
	return Option[T]{Flag: flag, Usage: usage, Field: field}
}

// Table is every option of one program.
type Table[T any] struct {
	// EnvPrefix is prepended to the upper-cased flag name, with - as _:
	// "GRAFT_" makes --log-level GRAFT_LOG_LEVEL.
	EnvPrefix string
	// Defaults returns the configuration before any layer applies.
	Defaults func() T
	Options  []Option[T]
}

// Loader loads the final configuration from a YAML file (none when file is
// empty) and an environment lookup, then applies the flags set on the
// command line.
type Loader[T any] func(file string, env func(string) (string, bool)) (T, error)

// EnvName is the environment variable of a flag.
func (t Table[T]) EnvName(flag string) string {
	return t.EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Bind registers every option on fs, with its default and its environment
// variable in the help, and returns the loader of the final configuration.
func (t Table[T]) Bind(fs *pflag.FlagSet) Loader[T] {
	flagVals := t.Defaults()
	def := t.Defaults()
	for _, o := range t.Options {
		usage := fmt.Sprintf("%s (env %s)", o.Usage, t.EnvName(o.Flag))
		switch p := o.Field(&flagVals).(type) {
		case *bool:
			fs.BoolVar(p, o.Flag, *o.Field(&def).(*bool), usage)
		case *string:
			fs.StringVar(p, o.Flag, *o.Field(&def).(*string), usage)
		case *int:
			fs.IntVar(p, o.Flag, *o.Field(&def).(*int), usage)
		case *time.Duration:
			fs.DurationVar(p, o.Flag, *o.Field(&def).(*time.Duration), usage)
		case *[]string:
			fs.StringSliceVar(p, o.Flag, *o.Field(&def).(*[]string), usage)
		default:
			panic(fmt.Sprintf("config: option --%s has unsupported type %T", o.Flag, p))
		}
	}
	return func(file string, env func(string) (string, bool)) (T, error) {
		cfg := t.Defaults()
		var p Problems
		if file != "" {
			var te *yaml.TypeError
			switch err := LoadFile(file, &cfg); {
			case errors.As(err, &te):
				// Unknown keys and mistyped values: the decoder went on
				// with the rest, so validation can report its problems
				// alongside these.
				for _, e := range te.Errors {
					p.Add("config file %s: %s", file, e)
				}
			case err != nil:
				return cfg, err // unreadable, or not YAML: nothing to validate
			}
		}
		for _, o := range t.Options {
			name := t.EnvName(o.Flag)
			if v, ok := env(name); ok {
				if err := setString(o.Field(&cfg), v); err != nil {
					p.Add("%s=%q: %v", name, v, err)
				}
			}
		}
		for _, o := range t.Options {
			if fs.Changed(o.Flag) {
				copyValue(o.Field(&cfg), o.Field(&flagVals))
			}
		}
		return cfg, p.Err()
	}
}

// Merge returns the problems of loading (a Loader's error) and of
// validating together, in one error, so that a user sees every problem at
// once. A load error that left nothing to validate (an unreadable file, a
// file that is not YAML) is returned alone.
func Merge(load, validate error) error {
	var lp *ProblemsError
	if load != nil && !errors.As(load, &lp) {
		return load
	}
	var all Problems
	for _, err := range []error{load, validate} {
		var pe *ProblemsError
		switch {
		case err == nil:
		case errors.As(err, &pe):
			all.list = append(all.list, pe.List...)
		default:
			all.list = append(all.list, err.Error())
		}
	}
	return all.Err()
}

// LoadFile decodes the YAML file name into cfg, refusing keys that cfg has
// no field for. An empty file sets nothing.
func LoadFile(name string, cfg any) error {
	data, err := os.ReadFile(name)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", name, err)
	}
	return nil
}

func setString(p any, v string) error {
	switch p := p.(type) {
	case *bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		*p = b
	case *string:
		*p = v
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return errors.New("want a whole number")
		}
		*p = n
	case *time.Duration:
		d, err := time.ParseDuration(v)
		if err != nil {
			return errors.New("want a duration such as 10s")
		}
		*p = d
	case *[]string:
		*p = SplitList(v)
	}
	return nil
}

func copyValue(dst, src any) {
	switch d := dst.(type) {
	case *bool:
		*d = *src.(*bool)
	case *string:
		*d = *src.(*string)
	case *int:
		*d = *src.(*int)
	case *time.Duration:
		*d = *src.(*time.Duration)
	case *[]string:
		*d = *src.(*[]string)
	}
}

// SplitList splits a comma-separated list, dropping blanks.
func SplitList(v string) []string {
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Problems collects what is wrong with a configuration, so that validation
// reports everything at once instead of one problem per attempt.
type Problems struct {
	list []string
}

// Add records one problem; say what is wrong and what to do.
func (p *Problems) Add(format string, args ...any) {
	p.list = append(p.list, fmt.Sprintf(format, args...))
}

// Err returns nil without problems, or one *ProblemsError listing each on
// its own line.
func (p *Problems) Err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &ProblemsError{List: slices.Clone(p.list)}
}

// ProblemsError is every problem found in a configuration.
type ProblemsError struct {
	List []string
}

func (e *ProblemsError) Error() string {
	return fmt.Sprintf("invalid configuration:\n  - %s", strings.Join(e.List, "\n  - "))
}
