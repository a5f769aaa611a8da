package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/Masterminds/sprig/v3"

	"github.com/graft-sh/graft/internal/atomicfile"
)

// view is what templates read: the agent's tree at one revision.
type view struct {
	root     string
	values   map[string][]byte // absolute path → value
	revision int64
}

// deps are the paths a render read: exact paths, the tree prefixes it
// listed, and the paths it looked for and did not find. A change to any of
// them renders the template again.
type deps struct {
	paths    map[string]bool
	prefixes map[string]bool
}

func (d deps) touches(path string) bool {
	if d.paths[path] {
		return true
	}
	for p := range d.prefixes {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

// keys are the paths a render read, sorted (for --dry-run and errors).
func (d deps) keys() []string {
	out := make([]string, 0, len(d.paths)+len(d.prefixes))
	for p := range d.paths {
		out = append(out, p)
	}
	for p := range d.prefixes {
		out = append(out, p+"/")
	}
	sort.Strings(out)
	return out
}

// MissingKeyError says a template read a key that is not in the tree.
type MissingKeyError struct {
	Template string
	Key      string
}

func (e *MissingKeyError) Error() string {
	return fmt.Sprintf("template %s: key %s does not exist (graft ls %s shows what does)", e.Template, e.Key, path.Dir(e.Key))
}

// rendered is one template's last outcome.
type rendered struct {
	deps deps
	hash string // of the bytes on disk, "" before the first success
	err  error
}

// resolve turns a template's path argument into an absolute path in the
// tree: relative paths are below the tree.
func (v *view) resolve(tmpl, p string) (string, error) {
	abs := p
	if !strings.HasPrefix(p, "/") {
		abs = v.root + "/" + p
	}
	abs = strings.TrimSuffix(abs, "/")
	if abs != v.root && !strings.HasPrefix(abs, v.root+"/") {
		return "", fmt.Errorf("template %s: %s is outside the agent's tree %s; share it into %s/replicated instead", tmpl, p, v.root, v.root)
	}
	return abs, nil
}

// render executes one template against the view and returns its bytes
// and what it read. A missing key is a *MissingKeyError.
func (v *view) render(name, text string) ([]byte, deps, error) {
	d := deps{paths: map[string]bool{}, prefixes: map[string]bool{}}
	funcs := sprig.TxtFuncMap()
	// env and expandenv would let a template read the agent's own
	// environment into a file; keep templates to graft's values.
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["secret"] = func(p string) (string, error) {
		abs, err := v.resolve(name, p)
		if err != nil {
			return "", err
		}
		d.paths[abs] = true
		val, ok := v.values[abs]
		if !ok {
			return "", &MissingKeyError{Template: name, Key: abs}
		}
		return string(val), nil
	}
	funcs["tree"] = func(p string) (map[string]string, error) {
		abs, err := v.resolve(name, p)
		if err != nil {
			return nil, err
		}
		d.prefixes[abs] = true
		out := map[string]string{}
		for k, val := range v.values {
			if strings.HasPrefix(k, abs+"/") {
				out[strings.TrimPrefix(k, abs+"/")] = string(val)
			}
		}
		return out, nil
	}
	funcs["revision"] = func() int64 { return v.revision }
	t, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, d, fmt.Errorf("template %s: %w", name, err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, nil); err != nil {
		var missing *MissingKeyError
		if errors.As(err, &missing) {
			return nil, d, missing
		}
		return nil, d, fmt.Errorf("template %s: %w", name, scrub(err))
	}
	return buf.Bytes(), d, nil
}

// scrub keeps an execution error's position and kind but not the values
// text/template may quote in it.
func scrub(err error) error {
	msg := err.Error()
	if i := strings.Index(msg, ": error calling "); i >= 0 {
		return errors.New(msg[:i] + ": error calling " + strings.SplitN(msg[i+len(": error calling "):], ":", 2)[0])
	}
	return err
}

// text returns a template's source: its contents, or its source file.
func (t Template) text(base string) (string, error) {
	if t.Source == "" {
		return t.Contents, nil
	}
	p := t.Source
	if !filepath.IsAbs(p) {
		p = filepath.Join(base, p)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("template %s: read its source: %w", t.Destination, err)
	}
	return string(data), nil
}

func hashOf(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// onDisk returns the hash of the file at name, or "" if there is none.
func onDisk(name string) string {
	data, err := os.ReadFile(name)
	if err != nil {
		return ""
	}
	return hashOf(data)
}

// write puts data at the template's destination unless the file already
// holds exactly it, and reports whether it wrote.
func (t Template) write(data []byte) (bool, error) {
	if onDisk(t.Destination) == hashOf(data) {
		return false, nil
	}
	uid, gid := -1, -1
	if t.UID != nil {
		uid = *t.UID
	}
	if t.GID != nil {
		gid = *t.GID
	}
	if err := os.MkdirAll(filepath.Dir(t.Destination), 0o755); err != nil {
		return false, fmt.Errorf("template %s: %w", t.Destination, err)
	}
	if err := atomicfile.WriteOwned(t.Destination, data, t.mode(), uid, gid); err != nil {
		return false, fmt.Errorf("template %s: %w", t.Destination, err)
	}
	return true, nil
}

// sourceModTime is when a template's source file last changed.
func (t Template) sourceModTime(base string) time.Time {
	if t.Source == "" {
		return time.Time{}
	}
	p := t.Source
	if !filepath.IsAbs(p) {
		p = filepath.Join(base, p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}
