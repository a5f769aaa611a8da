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
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/Masterminds/sprig/v3"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/internal/atomicfile"
)

// view is what templates read: the agent's tree at one revision.
type view struct {
	root     string
	values   map[string][]byte // absolute path → value
	revision int64
	parsed   *templates // the agent's parsed templates (nil: parse each)
	// creds gives dynamic credentials (nil: dbcred fails).
	creds credentialSource
}

// deps are the paths a render read: exact paths, the tree prefixes it
// listed, and the paths it looked for and did not find. A change to any of
// them renders the template again. withheld are those of them that name
// nothing in the tree and whose name the template computed instead of
// writing it as a literal: such a name may be made of a value (secret
// (secret "config/apikey")), so it is never shown, in keys or in errors.
// A computed name that exists is a name in the tree, shown like any other
// (rollout status finds the consumers of a path by them).
type deps struct {
	paths    map[string]bool
	prefixes map[string]bool
	withheld map[string]bool
	// creds are the roles whose dynamic credentials a render used: a
	// credential replaced renders the template again.
	creds map[string]bool
}

func newDeps() deps {
	return deps{paths: map[string]bool{}, prefixes: map[string]bool{}, withheld: map[string]bool{}, creds: map[string]bool{}}
}

// add records what o read too.
func (d deps) add(o deps) {
	for p := range o.paths {
		d.paths[p] = true
	}
	for p := range o.prefixes {
		d.prefixes[p] = true
	}
	for p := range o.withheld {
		d.withheld[p] = true
	}
	for p := range o.creds {
		d.creds[p] = true
	}
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

// keys are the paths a render read, sorted (for --dry-run and reports),
// without the withheld ones.
func (d deps) keys() []string {
	out := make([]string, 0, len(d.paths)+len(d.prefixes))
	for p := range d.paths {
		if !d.withheld[p] {
			out = append(out, p)
		}
	}
	for p := range d.prefixes {
		if !d.withheld[p+"/"] {
			out = append(out, p+"/")
		}
	}
	sort.Strings(out)
	return out
}

// MissingKeyError says a template read a key that is not in the tree.
// Computed says the template computed the key's name, which is then not
// shown (Key is empty).
type MissingKeyError struct {
	Template string
	Key      string
	Computed bool
}

func (e *MissingKeyError) Error() string {
	if e.Computed {
		return fmt.Sprintf("template %s: a key whose name the template computed does not exist (the name is withheld: it may be made of a value)", e.Template)
	}
	return fmt.Sprintf("template %s: key %s does not exist (graft ls %s shows what does)", e.Template, e.Key, path.Dir(e.Key))
}

// OutsideTreeError says a template named a path outside the agent's tree
// (Path is empty when the template computed it: it is withheld).
type OutsideTreeError struct {
	Template, Path, Root string
}

func (e *OutsideTreeError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("template %s: a path the template computed is outside the agent's tree %s (the path is withheld: it may be made of a value)", e.Template, e.Root)
	}
	return fmt.Sprintf("template %s: %s is outside the agent's tree %s; share it into %s/replicated instead", e.Template, e.Path, e.Root, e.Root)
}

// rendered is one template's last outcome.
type rendered struct {
	deps deps
	hash string // of the bytes on disk, "" before the first success
	err  error
}

// resolve turns a template's path argument into an absolute path in the
// tree: relative paths are below the tree. computed says the argument is
// not a string literal of the template's text.
func (v *view) resolve(tmpl, p string, computed bool) (string, error) {
	abs := p
	if !strings.HasPrefix(p, "/") {
		abs = v.root + "/" + p
	}
	abs = strings.TrimSuffix(abs, "/")
	if abs != v.root && !strings.HasPrefix(abs, v.root+"/") {
		if computed {
			p = ""
		}
		return "", &OutsideTreeError{Template: tmpl, Path: p, Root: v.root}
	}
	return abs, nil
}

// literal reports whether p is written in text as a string literal, so
// that it is a name the template's author chose and not one computed,
// perhaps from a value.
func literal(text, p string) bool {
	return strings.Contains(text, strconv.Quote(p)) || (!strings.Contains(p, "`") && strings.Contains(text, "`"+p+"`"))
}

// baseFuncs are sprig's functions a template may call. env and expandenv
// would let a template read the agent's own environment into a file;
// templates keep to graft's values.
func baseFuncs() template.FuncMap {
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	return funcs
}

// parseTemplate parses text as render does, with stand-ins for graft's
// own functions: validation reports a syntax error before any render.
func parseTemplate(name, text string) error {
	funcs := baseFuncs()
	funcs["secret"] = func(string) (string, error) { return "", nil }
	funcs["tree"] = func(string) (map[string]string, error) { return nil, nil }
	funcs["revision"] = func() int64 { return 0 }
	funcs["dbcred"] = func(string) (Credential, error) { return Credential{}, nil }
	_, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(text)
	return err
}

// render executes one template against the view and returns its bytes
// and what it read. A missing key is a *MissingKeyError.
func (v *view) render(name, text string) ([]byte, deps, error) {
	p, err := v.parsed.get(name, text)
	if err != nil {
		return nil, newDeps(), err
	}
	return p.execute(v)
}

// templates keeps an agent's templates parsed: parsing, and binding
// sprig's two hundred functions, cost more than a render, and a change
// renders every template that read it. A template is parsed again only
// when its text changes. The zero value (nil) parses each time.
type templates struct {
	mu     sync.Mutex
	byName map[string]*parsedTemplate
}

// parsedTemplate is one template, parsed with graft's functions bound to
// the render under way.
type parsedTemplate struct {
	name, text string
	t          *template.Template

	mu sync.Mutex // one render at a time
	v  *view
	d  deps
}

func (ts *templates) get(name, text string) (*parsedTemplate, error) {
	if ts == nil {
		return parse(name, text)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if p, ok := ts.byName[name]; ok && p.text == text {
		return p, nil
	}
	p, err := parse(name, text)
	if err != nil {
		return nil, err
	}
	if ts.byName == nil {
		ts.byName = map[string]*parsedTemplate{}
	}
	ts.byName[name] = p
	return p, nil
}

// parse parses text with graft's functions reading p's render under way.
func parse(name, text string) (*parsedTemplate, error) {
	p := &parsedTemplate{name: name, text: text}
	funcs := baseFuncs()
	funcs["secret"] = p.secret
	funcs["tree"] = p.tree
	funcs["revision"] = func() int64 { return p.v.revision }
	funcs["dbcred"] = p.dbcred
	t, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	p.t = t
	return p, nil
}

// execute renders p against v.
func (p *parsedTemplate) execute(v *view) ([]byte, deps, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.v, p.d = v, newDeps()
	defer func() { p.v = nil }()
	var buf bytes.Buffer
	if err := p.t.Execute(&buf, nil); err != nil {
		return nil, p.d, scrub(p.name, err)
	}
	return buf.Bytes(), p.d, nil
}

func (p *parsedTemplate) secret(path string) (string, error) {
	computed := !literal(p.text, path)
	abs, err := p.v.resolve(p.name, path, computed)
	if err != nil {
		return "", err
	}
	p.d.paths[abs] = true
	val, ok := p.v.values[abs]
	if !ok {
		if computed {
			p.d.withheld[abs] = true
			return "", &MissingKeyError{Template: p.name, Computed: true}
		}
		return "", &MissingKeyError{Template: p.name, Key: abs}
	}
	return string(val), nil
}

// dbcred gives the template a dynamic credential issued from the role
// shared into the tree at path: the same one at every render, renewed
// and, before its max TTL, replaced by the agent.
func (p *parsedTemplate) dbcred(path string) (Credential, error) {
	computed := !literal(p.text, path)
	abs, err := p.v.resolve(p.name, path, computed)
	if err != nil {
		return Credential{}, err
	}
	p.d.paths[abs] = true
	shown := abs
	if computed {
		shown = ""
	}
	val, ok := p.v.values[abs]
	if !ok {
		if computed {
			p.d.withheld[abs] = true
			return Credential{}, &MissingKeyError{Template: p.name, Computed: true}
		}
		return Credential{}, &CredentialError{Template: p.name, Path: shown,
			Err: fmt.Errorf("no role there: a DBA shares one with graft share <role> --to %s", abs)}
	}
	if _, err := dbcred.ParseRole(val); errors.Is(err, dbcred.ErrNotRole) {
		return Credential{}, &CredentialError{Template: p.name, Path: shown,
			Err: errors.New("the value there is not a role written by graft dbcred role put; share a role's path, not a value")}
	} else if err != nil {
		return Credential{}, &CredentialError{Template: p.name, Path: shown, Err: fmt.Errorf("the role there is not valid: %w", err)}
	}
	p.d.creds[abs] = true
	if p.v.creds == nil {
		return Credential{}, &CredentialError{Template: p.name, Path: shown, Err: errors.New("dynamic credentials are not available here")}
	}
	c, err := p.v.creds.credential(abs)
	if err != nil {
		return Credential{}, &CredentialError{Template: p.name, Path: shown, Err: err}
	}
	return c, nil
}

func (p *parsedTemplate) tree(path string) (map[string]string, error) {
	computed := !literal(p.text, path)
	abs, err := p.v.resolve(p.name, path, computed)
	if err != nil {
		return nil, err
	}
	p.d.prefixes[abs] = true
	out := map[string]string{}
	for k, val := range p.v.values {
		if strings.HasPrefix(k, abs+"/") {
			out[strings.TrimPrefix(k, abs+"/")] = string(val)
		}
	}
	if computed && len(out) == 0 {
		p.d.withheld[abs+"/"] = true
	}
	return out, nil
}

// execFailures describe text/template's execution failures by kind: the
// words before the first argument of each of its messages, and what to
// say instead. Only the kind is kept, because text/template's arguments
// are often the values being rendered (range can't iterate over <value>)
// and a function's error is whatever text the function chose (fail, a
// parser quoting its input). Anything else gets a generic description.
var execFailures = []struct{ prefix, say string }{
	{"range can't iterate over ", "range can't iterate over this value"},
	{"range over send-only channel ", "range can't iterate over this value"},
	{"can't use ", "range can't iterate over this value with two variables"},
	{"if/with can't use ", "if/with can't use this value"},
	{"can't evaluate field ", "can't evaluate this field"},
	{"map has no entry for key ", "map has no entry for this key"},
	{"nil pointer evaluating ", "nil pointer evaluating a field"},
	{"wrong number of args for ", "wrong number of arguments"},
	{"wrong type for value", "an argument has the wrong type"},
	{"invalid value; expected ", "an argument has the wrong type"},
	{"can't handle ", "an argument has the wrong type"},
	{"can't give argument to non-function ", "an argument given to something that is not a function"},
	{"exceeded maximum template depth", "exceeded maximum template depth"},
}

// funcNameRE is a template function's name.
var funcNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// scrub rebuilds an execution error from what cannot hold a value: the
// template's name, the position and the source text of the action that
// failed (text/template's prefix, all from the template, never from the
// data), and a fixed description of the failure's kind (or the name of
// the function whose call failed). Whatever text/template or a function
// appended to that is dropped, so no form of a value (quoted, escaped,
// embedded in a parser's error) can reach a log or a report. The agent's
// own errors (a missing key, a path outside the tree) hold paths only and
// pass unchanged.
func scrub(name string, err error) error {
	var missing *MissingKeyError
	var outside *OutsideTreeError
	switch {
	case errors.As(err, &missing):
		return missing
	case errors.As(err, &outside):
		return outside
	}
	var cred *CredentialError
	if errors.As(err, &cred) {
		return cred
	}
	msg := err.Error()
	// text/template's message is "template: LOCATION: executing NAME at
	// <ACTION>: KIND ARGS..." (or "template: NAME: KIND ARGS..." with no
	// position). Cutting at the first ">: " after "executing" keeps a
	// prefix of the part made of the template's own text: the true end of
	// that part is at or after it.
	where := fmt.Sprintf("template: %s", name)
	rest := ""
	if i := strings.Index(msg, ": executing "); i >= 0 && strings.HasPrefix(msg, "template: ") {
		if j := strings.Index(msg[i:], ">: "); j >= 0 {
			where, rest = msg[:i+j+1], msg[i+j+3:]
		}
	}
	say := "the template failed while running (the details are withheld: they may hold a value)"
	if fn, _, ok := strings.Cut(strings.TrimPrefix(rest, "error calling "), ":"); ok && strings.HasPrefix(rest, "error calling ") && funcNameRE.MatchString(fn) {
		say = "error calling " + fn + " (its message is withheld: it may hold a value)"
	} else {
		for _, f := range execFailures {
			if strings.HasPrefix(rest, f.prefix) {
				say = f.say
				break
			}
		}
	}
	return fmt.Errorf("template %s: %s: %s", name, where, say)
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

// write puts data, whose hash is sum, at the template's destination
// unless the file already holds exactly it, and reports whether it wrote.
// Either way the file ends with the template's mode and owner: a mode
// changed in the configuration, or a file someone opened up, is put right
// without a write (and without a reload: the bytes did not change).
//
// last is the hash of what the agent last wrote or found there: when sum
// differs from it the file is written without reading it first (a
// change reaches thousands of agents on a host at once); at the start
// (last "") and when the content is the same as before, the file is read
// to compare.
func (t Template) write(data []byte, sum, last string) (bool, error) {
	uid, gid := -1, -1
	if t.UID != nil {
		uid = *t.UID
	}
	if t.GID != nil {
		gid = *t.GID
	}
	if (last == "" || sum == last) && onDisk(t.Destination) == sum {
		if err := t.ensureModeAndOwner(uid, gid); err != nil {
			return false, fmt.Errorf("template %s: %w", t.Destination, err)
		}
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(t.Destination), 0o755); err != nil {
		return false, fmt.Errorf("template %s: %w", t.Destination, err)
	}
	if err := atomicfile.WriteOwned(t.Destination, data, t.mode(), uid, gid); err != nil {
		return false, fmt.Errorf("template %s: %w", t.Destination, err)
	}
	return true, nil
}

// ensureModeAndOwner gives an existing destination the template's mode,
// and its owner and group when they are set (-1: left as it is).
func (t Template) ensureModeAndOwner(uid, gid int) error {
	st, err := os.Stat(t.Destination)
	if err != nil {
		return err
	}
	if st.Mode().Perm() != t.mode().Perm() {
		if err := os.Chmod(t.Destination, t.mode()); err != nil {
			return err
		}
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		if uid >= 0 && int(sys.Uid) == uid {
			uid = -1
		}
		if gid >= 0 && int(sys.Gid) == gid {
			gid = -1
		}
	}
	if uid >= 0 || gid >= 0 {
		return os.Chown(t.Destination, uid, gid)
	}
	return nil
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
