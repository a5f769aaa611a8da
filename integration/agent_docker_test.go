//go:build integration

package integration

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/graft-sh/graft/agent"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// dockerApp is the docker reload action's setting: a graftd in this
// process where a DBA's values are shared into the tree of an application,
// envapp, and a host directory the agent renders envapp's env file into,
// which envapp's container mounts at /config.
type dockerApp struct {
	t     *testing.T
	root  *sdk.Client
	addr  string // graftd's
	token string // app:envapp's
	dir   string // mounted at /config
}

const envTemplate = `APP_GREETING={{ secret "replicated/config/greeting" }}
APP_HEALTHY={{ secret "replicated/config/healthy" }}
`

func newDockerApp(t *testing.T) *dockerApp {
	t.Helper()
	requireDocker(t)
	g := graftdtest.Start(t)
	ctx := t.Context()
	root, err := sdk.New(ctx, sdk.Config{Addr: g.Addr, Token: g.Token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	d := &dockerApp{t: t, root: root, addr: g.Addr, dir: t.TempDir()}
	d.put("greeting", "hello-1")
	d.put("healthy", "true")
	if _, _, err := root.Share(ctx, "/dba/envapp/config", []string{"/app/envapp/replicated/config"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the share's copies", func() bool {
		_, err := root.Get(ctx, "/app/envapp/replicated/config/healthy")
		return err == nil
	})
	if d.token, _, err = root.CreateToken(ctx, "app:envapp", []string{"app"}, 0); err != nil {
		t.Fatal(err)
	}
	return d
}

// put writes a DBA's value, which replication copies into envapp's tree.
func (d *dockerApp) put(key, value string) {
	d.t.Helper()
	if _, err := d.root.Put(d.t.Context(), "/dba/envapp/config/"+key, []byte(value)); err != nil {
		d.t.Fatalf("put %s: %v", key, err)
	}
}

// config is an agent that renders envapp's env file and restarts the
// container named container after it changed.
func (d *dockerApp) config(container string) agent.Config {
	d.t.Helper()
	tokenFile := filepath.Join(d.t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(d.token), 0o600); err != nil {
		d.t.Fatal(err)
	}
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App, cfg.Listen = d.addr, tokenFile, "envapp", "127.0.0.1:0"
	cfg.Templates = []agent.Template{{Destination: filepath.Join(d.dir, "app.env"), Contents: envTemplate}}
	cfg.Reload = []agent.Action{{Docker: &agent.DockerAction{Container: container, Timeout: 5 * time.Second}}}
	cfg.Wait = agent.Wait{Min: 50 * time.Millisecond, Max: time.Second}
	return cfg
}

// renderOnce renders the env file as `graft-agent --once` does before the
// application starts, in an init container or a unit's ExecStartPre.
func (d *dockerApp) renderOnce(cfg agent.Config) {
	d.t.Helper()
	cfg.Once = true
	a, err := agent.New(d.t.Context(), cfg, testenv.Logger(d.t), nil)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := a.Run(d.t.Context()); err != nil {
		d.t.Fatalf("agent --once: %v", err)
	}
}

// runAgent runs an agent until the test ends and waits for its first
// complete render.
func (d *dockerApp) runAgent(cfg agent.Config) *agent.Agent {
	d.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(ctx, cfg, testenv.Logger(d.t), nil)
	if err != nil {
		d.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	d.t.Cleanup(func() { cancel(); <-done })
	testenv.WaitFor(d.t, 10*time.Second, a.Ready)
	return a
}

// containerName is a name no other run's container has.
func containerName(prefix string) string { return prefix + strings.ToLower(rand.Text()[:8]) }

// startEnvServer runs envapp: the envserver image, as container name,
// loading /config/app.env at start, with a health check of its /healthz
// (by the envserver binary itself: the image has no shell). The host
// directory is mounted rather than the file, so that the agent's rename of
// a new file over the old one shows in the container.
func (d *dockerApp) startEnvServer(name string) testcontainers.Container {
	d.t.Helper()
	return startContainer(d.t, testcontainers.ContainerRequest{
		Image:        image("GRAFT_ENVSERVER_IMAGE", "graft-envserver:dev"),
		Name:         name,
		Env:          map[string]string{"ENV_FILE": "/config/app.env"},
		ExposedPorts: []string{"8080/tcp"},
		ConfigModifier: func(c *container.Config) {
			c.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/app", "health"},
				Interval: 500 * time.Millisecond, Timeout: 2 * time.Second, Retries: 1}
		},
		HostConfigModifier: func(hc *container.HostConfig) { hc.Binds = []string{d.dir + ":/config:ro"} },
		WaitingFor:         wait.ForHTTP("/healthz").WithPort("8080/tcp").WithStartupTimeout(30 * time.Second),
	}, name)
}

// served is what envapp serves at GET /, or "" while it does not answer
// (it is restarting, and its published port may change).
func served(ctx context.Context, ctr testcontainers.Container) string {
	port, err := ctr.MappedPort(ctx, "8080/tcp")
	if err != nil {
		return ""
	}
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://localhost:%s/", port.Port()))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// starts counts the starts of a container's process: envserver logs a line
// at each, and a restart keeps the log.
func starts(t *testing.T, ctr testcontainers.Container) int {
	t.Helper()
	rc, err := ctr.Logs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out, _ := io.ReadAll(rc)
	return strings.Count(string(out), "envserver started")
}

func startedAt(t *testing.T, ctr testcontainers.Container) string {
	t.Helper()
	st, err := ctr.State(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st.StartedAt
}

// metric is the agent's graft_agent_reloads_total for the docker action
// with outcome ("ok" or "failed"), 0 before the first.
func metric(t *testing.T, a *agent.Agent, outcome string) string {
	t.Helper()
	resp, err := http.Get("http://" + a.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	prefix := `graft_agent_reloads_total{kind="docker",outcome="` + outcome + `"} `
	for l := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), prefix); ok {
			return v
		}
	}
	return "0"
}

// A DBA's new value reaches an application that reads its environment
// only at start: the agent renders the env file into the directory the
// container mounts and restarts the container through the Docker engine,
// once, and the restarted application serves the new value. An agent
// started over an unchanged file restarts nothing.
func TestAgentDockerRestartServesTheNewValue(t *testing.T) {
	d := newDockerApp(t)
	ctx := t.Context()
	name := containerName("graft-envapp-")
	d.renderOnce(d.config(name))
	ctr := d.startEnvServer(name)
	if got := served(ctx, ctr); got != "APP_GREETING=hello-1\nAPP_HEALTHY=true\n" {
		t.Fatalf("envapp serves %q before the change", got)
	}
	before := startedAt(t, ctr)

	a := d.runAgent(d.config(name))
	time.Sleep(500 * time.Millisecond) // time for a wrong restart to show
	if n := starts(t, ctr); n != 1 || metric(t, a, "ok") != "0" {
		t.Fatalf("an agent started over an unchanged file restarted the container: %d starts, %s docker reloads", n, metric(t, a, "ok"))
	}

	start := time.Now()
	d.put("greeting", "hello-2")
	eventually(t, 60*time.Second, "envapp serving the new value", func() bool { return served(ctx, ctr) == "APP_GREETING=hello-2\nAPP_HEALTHY=true\n" })
	t.Logf("the DBA's write to the new value served by the restarted container: %s", time.Since(start).Round(time.Millisecond))
	eventually(t, 10*time.Second, "the docker reload counted", func() bool { return metric(t, a, "ok") == "1" })
	time.Sleep(500 * time.Millisecond) // time for a second restart to show
	if n := starts(t, ctr); n != 2 {
		t.Fatalf("envapp started %d times, want 2: once, then one restart for one change", n)
	}
	if after := startedAt(t, ctr); after == before {
		t.Fatalf("the container's start time is still %s", before)
	}
	if got := metric(t, a, "ok") + "/" + metric(t, a, "failed"); got != "1/0" {
		t.Fatalf("docker reloads ok/failed = %s, want 1/0", got)
	}
}

// A restart after which the container's health check fails is a failed
// reload, reported with the container's name and what to look at.
func TestAgentDockerRestartIntoUnhealthyFails(t *testing.T) {
	d := newDockerApp(t)
	name := containerName("graft-envapp-")
	d.renderOnce(d.config(name))
	ctr := d.startEnvServer(name)
	a := d.runAgent(d.config(name))
	d.put("healthy", "false")
	eventually(t, 60*time.Second, "the docker reload failed", func() bool { return metric(t, a, "failed") == "1" })
	if n := starts(t, ctr); n < 2 {
		t.Fatalf("envapp started %d times: it was never restarted", n)
	}
	rep := d.failedReport(t)
	want := "reload (docker) failed: docker: container " + name + " is unhealthy after the restart"
	if rep.Healthy || !strings.HasPrefix(rep.Reason, want) {
		t.Fatalf("the agent reports healthy=%v, %q; want unhealthy, %q", rep.Healthy, rep.Reason, want)
	}
}

// A docker action naming a container that does not exist fails, saying
// so with the name, and the agent goes on following its tree.
func TestAgentDockerMissingContainerFails(t *testing.T) {
	d := newDockerApp(t)
	missing := containerName("graft-no-such-container-")
	a := d.runAgent(d.config(missing))
	eventually(t, 30*time.Second, "the docker reload failed", func() bool { return metric(t, a, "failed") == "1" })
	rep := d.failedReport(t)
	engine := os.Getenv("DOCKER_HOST")
	if engine == "" {
		engine = "unix:///var/run/docker.sock"
	}
	want := "docker: restart container " + missing + ": the engine at " + engine + " has no container of that name or id; check docker.container against `docker ps -a`"
	if len(rep.Reloads) != 1 || rep.Reloads[0].Kind != "docker" || rep.Reloads[0].Error != want {
		t.Fatalf("the agent reports reloads %+v, want the docker action failed with %q", rep.Reloads, want)
	}

	// Still running: a new value is rendered, and reloading fails again.
	d.put("greeting", "hello-2")
	env := filepath.Join(d.dir, "app.env")
	eventually(t, 10*time.Second, "the new value rendered", func() bool {
		data, _ := os.ReadFile(env)
		return strings.Contains(string(data), "hello-2")
	})
	eventually(t, 30*time.Second, "the second docker reload failed", func() bool { return metric(t, a, "failed") == "2" })
}

// failedReport is envapp's agent's report to graftd once it holds a
// failed reload.
func (d *dockerApp) failedReport(t *testing.T) sdk.AgentReport {
	t.Helper()
	var reps []sdk.AgentReport
	eventually(t, 10*time.Second, "a report of the failed reload", func() bool {
		var err error
		reps, err = d.root.ListAgents(t.Context(), "envapp")
		return err == nil && len(reps) == 1 && len(reps[0].Reloads) > 0 && !reps[0].Reloads[0].OK
	})
	return reps[0]
}

// eventually polls cond every 100 ms (each poll asks the engine or an HTTP
// server) and fails the test, saying what did not happen, after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
