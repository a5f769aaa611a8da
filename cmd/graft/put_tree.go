package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/graft-sh/graft/sdk"
)

// treeValues reads --set KEY=VALUE and --set-file KEY=FILE into the values
// of one tree write, refusing a key given twice.
func (a *app) treeValues(sets, files []string) (map[string][]byte, error) {
	values := map[string][]byte{}
	add := func(flag, kv string, read func(string) ([]byte, error)) error {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("put: %s %q: want KEY=%s, KEY relative to PATH (such as user or db/password)", flag, redactKV(kv), map[bool]string{true: "VALUE", false: "FILE"}[flag == "--set"])
		}
		if _, dup := values[k]; dup {
			return fmt.Errorf("put: key %s is given twice", k)
		}
		data, err := read(v)
		if err != nil {
			return err
		}
		values[k] = data
		return nil
	}
	for _, kv := range sets {
		if err := add("--set", kv, func(v string) ([]byte, error) { return []byte(v), nil }); err != nil {
			return nil, err
		}
	}
	for _, kv := range files {
		if err := add("--set-file", kv, func(name string) ([]byte, error) {
			f, err := os.Open(name)
			if err != nil {
				return nil, fmt.Errorf("put: %w", err)
			}
			defer f.Close()
			return a.readValue(f, name)
		}); err != nil {
			return nil, err
		}
	}
	return values, nil
}

// redactKV shows the key of a malformed KEY=VALUE, never the value.
func redactKV(kv string) string {
	if k, _, ok := strings.Cut(kv, "="); ok {
		return k + "=…"
	}
	if len(kv) > 0 {
		return "…"
	}
	return ""
}

// putTree writes values below root in one transaction.
func (a *app) putTree(ctx context.Context, c *sdk.Client, root string, values map[string][]byte) error {
	if len(values) == 0 {
		return errors.New("put: no values")
	}
	es, err := c.PutTree(ctx, root, values)
	if err != nil {
		return err
	}
	views := make([]entryView, len(es))
	for i := range es {
		views[i] = viewEntry(&es[i], false)
	}
	return a.Emit(views, func(w io.Writer) error {
		paths := make([]string, len(es))
		for i, e := range es {
			paths[i] = e.Path
		}
		slices.Sort(paths)
		_, err := fmt.Fprintf(w, "%s revision %d (one transaction)\n", strings.Join(paths, ", "), es[0].Revision)
		return err
	})
}
