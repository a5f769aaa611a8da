package agent

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/spf13/pflag"
)

// fakeEngine answers the Docker Engine API calls of a restart on a unix
// socket: the restart, then one inspect answer per state in turn (the last
// repeated).
type fakeEngine struct {
	mu       sync.Mutex
	states   []*container.State
	restarts int
	stopT    string // the restart's stop timeout, in seconds
	inspects int
}

func startFakeEngine(t *testing.T, states ...*container.State) (*fakeEngine, string) {
	t.Helper()
	return startFakeEngineAt(t, filepath.Join(t.TempDir(), "docker.sock"), states...)
}

func startFakeEngineAt(t *testing.T, sock string, states ...*container.State) (*fakeEngine, string) {
	t.Helper()
	f := &fakeEngine{states: states}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return f, "unix://" + sock
}

func (f *fakeEngine) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.Header().Set("Api-Version", "1.41")
	notFound := func() {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"message": "No such container: missing"}`))
	}
	switch {
	case r.URL.Path == "/_ping":
	case strings.HasSuffix(r.URL.Path, "/containers/missing/restart"), strings.HasSuffix(r.URL.Path, "/containers/missing/json"):
		notFound()
	case strings.HasSuffix(r.URL.Path, "/restart") && r.Method == http.MethodPost:
		f.restarts++
		f.stopT = r.URL.Query().Get("t")
		w.WriteHeader(http.StatusNoContent)
	case strings.HasSuffix(r.URL.Path, "/json"):
		st := f.states[min(f.inspects, len(f.states)-1)]
		f.inspects++
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(container.InspectResponse{ID: "abc", Name: "/app", State: st})
	default:
		http.NotFound(w, r)
	}
}

func running(health container.HealthStatus) *container.State {
	st := &container.State{Status: container.StateRunning, Running: true}
	if health != "" {
		st.Health = &container.Health{Status: health, FailingStreak: 3}
	}
	return st
}

// A restart succeeds once the container runs and, with a health check, is
// healthy; it fails, saying what to look at, when the container is
// unhealthy or exited after the restart, or does not exist.
func TestDockerRestartWaitsForRunningAndHealthy(t *testing.T) {
	exited := &container.State{Status: container.StateExited, ExitCode: 3}
	restarting := &container.State{Status: container.StateRestarting, Restarting: true}
	tests := []struct {
		name      string
		container string
		states    []*container.State
		wantErr   string // "" for success
		inspects  int    // how many the answer takes
	}{
		{"running without a health check", "app", []*container.State{running("")}, "", 1},
		{"starting, then healthy", "app", []*container.State{running(container.Starting), running(container.Starting), running(container.Healthy)}, "", 3},
		{"restarted by its policy, then running", "app", []*container.State{restarting, running("")}, "", 2},
		{"unhealthy", "app", []*container.State{running(container.Starting), running(container.Unhealthy)},
			"docker: container app is unhealthy after the restart (failing streak 3); see docker inspect --format '{{json .State.Health}}' app", 2},
		{"exited", "app", []*container.State{exited}, "docker: container app is exited (exit status 3) after the restart; see docker logs app", 1},
		{"no such container", "missing", nil, "has no container of that name or id; check docker.container against `docker ps -a`", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, host := startFakeEngine(t, tt.states...)
			d := &dockerRestarter{action: &DockerAction{Container: tt.container, Host: host, Timeout: 2500 * time.Millisecond}}
			defer d.Close()
			err := d.Run(t.Context())
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("run: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("run: %v, want an error with %q", err, tt.wantErr)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.inspects != tt.inspects {
				t.Fatalf("answered after %d inspects, want %d", f.inspects, tt.inspects)
			}
			if tt.inspects > 0 && (f.restarts != 1 || f.stopT != "3") {
				t.Fatalf("%d restarts with t=%q, want 1 with the stop timeout rounded up to 3 s", f.restarts, f.stopT)
			}
		})
	}
}

// An engine that cannot be reached is named in the error, with what to
// check: no socket, nothing listening on it, nothing on a TCP address.
func TestDockerEngineUnreachable(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := tl.Addr().String()
	tl.Close()
	tests := []struct{ host, want string }{
		{"unix://" + filepath.Join(dir, "none.sock"), "docker: restart container app: no Docker socket at " + filepath.Join(dir, "none.sock") + ": is the engine running there?"},
		{"unix://" + stale, "docker: restart container app: cannot reach the Docker engine at unix://" + stale + ": is it running there?"},
		{"tcp://" + closed, "docker: restart container app: cannot reach the Docker engine at tcp://" + closed + ": is it running there?"},
	}
	for _, tt := range tests {
		d := &dockerRestarter{action: &DockerAction{Container: "app", Host: tt.host}}
		if err := d.Run(t.Context()); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error starting %q", tt.host, err, tt.want)
		}
		d.Close()
	}
}

// An agent that may not use the engine's socket is told it needs access
// to it. Root may open any socket, so as root the check runs as nobody in
// a copy of this test binary.
func TestDockerSocketPermissionDenied(t *testing.T) {
	if host := os.Getenv("GRAFT_DOCKER_TEST_HOST"); host != "" {
		err := (&dockerRestarter{action: &DockerAction{Container: "app", Host: host}}).Run(t.Context())
		os.Stdout.WriteString("ERROR: " + err.Error() + "\n")
		return
	}
	dir, err := os.MkdirTemp("", "graft-docker-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "docker.sock")
	_, host := startFakeEngineAt(t, sock)
	const want = "docker: restart container app: permission denied on the Docker socket "
	if os.Geteuid() != 0 {
		if err := os.Chmod(sock, 0); err != nil {
			t.Fatal(err)
		}
		if err := (&dockerRestarter{action: &DockerAction{Container: "app", Host: host}}).Run(t.Context()); err == nil || !strings.HasPrefix(err.Error(), want+sock+": the agent needs access to it") {
			t.Fatalf("run: %v, want %q", err, want)
		}
		return
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	copied := filepath.Join(dir, "agent.test")
	if err := os.WriteFile(copied, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(copied, "-test.run=^TestDockerSocketPermissionDenied$", "-test.v")
	cmd.Dir = dir
	cmd.Env = []string{"GRAFT_DOCKER_TEST_HOST=" + host, "PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the test as nobody: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "ERROR: "+want+sock+": the agent needs access to it") {
		t.Fatalf("as nobody, want %q; got:\n%s", want, out)
	}
}

// The example loads as written; a docker action with mistakes
// reports each, together with the other problems.
func TestDockerActionConfig(t *testing.T) {
	dir := t.TempDir()
	load := func(text string) (Config, error) {
		t.Helper()
		file := filepath.Join(dir, "agent.yaml")
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return Flags(pflag.NewFlagSet("graft-agent", pflag.ContinueOnError))(file, func(string) (string, bool) { return "", false })
	}
	const base = "app: message-processor\ntoken_file: /run/graft/token\ntemplates: [{destination: /config/app.env, contents: x}]\n"
	cfg, err := load(base + `reload:
  - docker: { container: message-processor }      # restart through the Docker Engine API
  - docker: { container: 3f4e8a, host: "tcp://10.0.0.5:2376", timeout: 30s }
`)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Reload[0]; newReloaders(cfg, nil)[0].Kind() != "docker" || got.Docker.Container != "message-processor" || got.Docker.Host != "" || got.Docker.Timeout != 0 {
		t.Fatalf("reload[0] = %+v", got.Docker)
	}
	if got := cfg.Reload[1].Docker; got.Container != "3f4e8a" || got.Host != "tcp://10.0.0.5:2376" || got.Timeout != 30*time.Second {
		t.Fatalf("reload[1] = %+v", got)
	}

	_, err = load(base + `reload:
  - docker: { host: "ssh://me@host", timeout: -1s }
  - docker: { container: "-x y" }
    command: [/bin/true]
`)
	for _, want := range []string{
		"reload[0]: docker.container is required", `reload[0]: docker.host "ssh://me@host": want unix://`,
		"reload[0]: docker.timeout must not be negative", `reload[1]: docker.container "-x y": want a container name`,
		"reload[1]: give exactly one of signal, http, command, docker and kubernetes",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("the problems lack %q:\n%v", want, err)
		}
	}
}
