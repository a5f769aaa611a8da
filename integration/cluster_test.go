//go:build integration

// Package integration runs graft as it is deployed: graftd, etcd and
// nats-server each in their own container (images built FROM scratch by
// `make images`) on a private Docker network, driven from the host through
// the SDK. Run it with `make integration`.
package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/graft-sh/graft/keyring"
	"github.com/graft-sh/graft/sdk"
)

func TestMain(m *testing.M) {
	// No reaper: its image cannot be pulled here, and every test
	// terminates what it starts. Ports are published on this machine's
	// loopback; testcontainers would otherwise guess the VM's gateway.
	setDefault("TESTCONTAINERS_RYUK_DISABLED", "true")
	setDefault("TESTCONTAINERS_HOST_OVERRIDE", "localhost")
	os.Exit(m.Run())
}

func setDefault(env, v string) {
	if os.Getenv(env) == "" {
		os.Setenv(env, v)
	}
}

// image returns the image named by env, or def.
func image(env, def string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

// cluster is etcd, NATS and any number of graftd containers on one network.
type cluster struct {
	t       *testing.T
	ctx     context.Context
	net     *testcontainers.DockerNetwork
	etcd    testcontainers.Container
	nats    testcontainers.Container
	keyring string
}

// newCluster starts etcd and NATS, and writes the keyring every graftd of
// the cluster shares. Without Docker or the images the test is skipped, or
// fails when GRAFT_REQUIRE_DOCKER=1 (as in CI).
func newCluster(t *testing.T) *cluster {
	t.Helper()
	ctx := context.Background()
	requireDocker(t)
	nw, err := network.New(ctx)
	if err != nil {
		t.Fatalf("docker network: %v", err)
	}
	t.Cleanup(func() { nw.Remove(context.Background()) })
	c := &cluster{t: t, ctx: ctx, net: nw}

	c.etcd = c.start(testcontainers.ContainerRequest{
		Image: image("GRAFT_ETCD_IMAGE", "graft-etcd:dev"),
		Cmd: []string{"--name", "etcd", "--data-dir", "/data",
			"--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://etcd:2379",
			"--listen-peer-urls", "http://0.0.0.0:2380", "--initial-advertise-peer-urls", "http://etcd:2380",
			"--initial-cluster", "etcd=http://etcd:2380"},
		ExposedPorts: []string{"2379/tcp"},
		WaitingFor:   wait.ForHTTP("/health").WithPort("2379/tcp").WithStartupTimeout(60 * time.Second),
	}, "etcd")
	c.nats = c.start(testcontainers.ContainerRequest{
		Image: image("GRAFT_NATS_IMAGE", "graft-nats:dev"),
		// The shipped configuration: JetStream syncs every message.
		Files:        []testcontainers.ContainerFile{{HostFilePath: "../deploy/nats.conf", ContainerFilePath: "/etc/nats/nats.conf", FileMode: 0o644}},
		Cmd:          []string{"-c", "/etc/nats/nats.conf"},
		ExposedPorts: []string{"4222/tcp", "8222/tcp"},
		WaitingFor:   wait.ForHTTP("/healthz?js-enabled-only=true").WithPort("8222/tcp").WithStartupTimeout(60 * time.Second),
	}, "nats")
	c.checkNATSSyncsEveryMessage()

	c.keyring = filepath.Join(t.TempDir(), "keyring.json")
	if err := keyring.CreateFile(c.keyring); err != nil {
		t.Fatal(err)
	}
	return c
}

// requireDocker skips the test without a Docker engine, or fails it when
// GRAFT_REQUIRE_DOCKER=1 (as in CI).
func requireDocker(t *testing.T) {
	t.Helper()
	cli, err := testcontainers.NewDockerClientWithOpts(context.Background())
	if err == nil {
		_, err = cli.Ping(context.Background(), client.PingOptions{})
		cli.Close()
	}
	if err != nil {
		if os.Getenv("GRAFT_REQUIRE_DOCKER") == "1" {
			t.Fatalf("docker: %v", err)
		}
		t.Skipf("no Docker engine (%v); set GRAFT_REQUIRE_DOCKER=1 to fail instead", err)
	}
}

// start runs a container on the cluster's network under alias.
// checkNATSSyncsEveryMessage fails the test unless the NATS container
// runs JetStream with sync_interval: always, as deploy/nats.conf says:
// its monitoring endpoint reports the configuration it loaded.
func (c *cluster) checkNATSSyncsEveryMessage() {
	c.t.Helper()
	endpoint, err := c.nats.PortEndpoint(c.ctx, "8222/tcp", "http")
	if err != nil {
		c.t.Fatalf("nats monitoring endpoint: %v", err)
	}
	resp, err := http.Get(endpoint + "/varz")
	if err != nil {
		c.t.Fatalf("nats /varz: %v", err)
	}
	defer resp.Body.Close()
	var varz struct {
		JetStream struct {
			Config struct {
				SyncAlways bool `json:"sync_always"`
			} `json:"config"`
		} `json:"jetstream"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&varz); err != nil {
		c.t.Fatalf("nats /varz: %v", err)
	}
	if !varz.JetStream.Config.SyncAlways {
		c.t.Fatal("nats runs JetStream without sync_interval: always: an acknowledged audit record could be lost with the machine (deploy/nats.conf)")
	}
}

func (c *cluster) start(req testcontainers.ContainerRequest, alias string) testcontainers.Container {
	c.t.Helper()
	req.Networks = []string{c.net.Name}
	req.NetworkAliases = map[string][]string{c.net.Name: {alias}}
	return startContainer(c.t, req, alias)
}

// requireImage skips the test when the engine does not hold image, or
// fails it when GRAFT_REQUIRE_DOCKER=1. It asks the engine rather than
// reading the start's error: with no registry reachable the engine
// answers a missing image with a failed pull, not "No such image", and
// the test failed where it should have skipped (make images builds them).
func requireImage(t *testing.T, image string) {
	t.Helper()
	cli, err := testcontainers.NewDockerClientWithOpts(context.Background())
	if err != nil {
		t.Fatalf("docker: %v", err)
	}
	defer cli.Close()
	_, err = cli.ImageInspect(context.Background(), image)
	switch {
	case err == nil:
	case !errdefs.IsNotFound(err):
		t.Fatalf("docker: inspect image %s: %v", image, err)
	case os.Getenv("GRAFT_REQUIRE_DOCKER") == "1":
		t.Fatalf("image %s is missing: run make images (GRAFT_REQUIRE_DOCKER=1)", image)
	default:
		t.Skipf("image %s is missing (make images builds it); set GRAFT_REQUIRE_DOCKER=1 to fail instead", image)
	}
}

// startContainer runs a container, terminates it at the end of the test
// and, if the test failed, shows the end of its log. Without its image the
// test is skipped, or fails when GRAFT_REQUIRE_DOCKER=1.
func startContainer(t *testing.T, req testcontainers.ContainerRequest, name string) testcontainers.Container {
	t.Helper()
	requireImage(t, req.Image)
	ctr, err := testcontainers.GenericContainer(context.Background(), testcontainers.GenericContainerRequest{ContainerRequest: req, Started: true})
	if ctr != nil {
		t.Cleanup(func() {
			if t.Failed() {
				dumpLogs(t, name, ctr)
			}
			ctr.Terminate(context.Background())
		})
	}
	if err != nil {
		t.Fatalf("start %s (%s): %v", name, req.Image, err)
	}
	return ctr
}

// kill sends SIGKILL to a container: no graceful shutdown, its etcd
// leases and JetStream pulls simply stop.
func (c *cluster) kill(ctr testcontainers.Container) {
	c.t.Helper()
	cli, err := testcontainers.NewDockerClientWithOpts(c.ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.ContainerKill(c.ctx, ctr.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		c.t.Fatalf("kill %s: %v", ctr.GetContainerID(), err)
	}
}

// dumpLogs writes the last lines of a container's log to the test log.
func dumpLogs(t *testing.T, name string, ctr testcontainers.Container) {
	rc, err := ctr.Logs(context.Background())
	if err != nil {
		return
	}
	defer rc.Close()
	var lines []string
	sc := bufio.NewScanner(rc)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	t.Logf("--- %s log (last %d lines)\n%s", name, len(lines), strings.Join(lines, "\n"))
}

// graftdArgs is how every graftd of the cluster runs: production mode
// against the cluster's etcd and NATS, plaintext on the private network.
func (c *cluster) graftdArgs(extra ...string) []string {
	return append([]string{
		"--etcd-endpoints", "http://etcd:2379", "--nats-url", "nats://nats:4222",
		"--keyring-file", "/etc/graft/keyring.json", "--data-dir", "/data",
		"--listen", "0.0.0.0:7420", "--http-listen", "0.0.0.0:7421", "--insecure-listen",
		"--log-format", "json",
	}, extra...)
}

func (c *cluster) keyringFile() []testcontainers.ContainerFile {
	return []testcontainers.ContainerFile{{HostFilePath: c.keyring, ContainerFilePath: "/etc/graft/keyring.json", FileMode: 0o600}}
}

// graftd starts a graftd replica named name and waits until it is ready.
func (c *cluster) graftd(name string) testcontainers.Container {
	c.t.Helper()
	return c.start(testcontainers.ContainerRequest{
		Image:        image("GRAFT_IMAGE", "graft-graftd:dev"),
		Cmd:          c.graftdArgs(),
		Files:        c.keyringFile(),
		ExposedPorts: []string{"7420/tcp", "7421/tcp"},
		WaitingFor:   wait.ForHTTP("/readyz").WithPort("7421/tcp").WithStartupTimeout(60 * time.Second),
	}, name)
}

// breakGlass mints a root token the way an operator of a new cluster does,
// with `graftd break-glass` in a container of its own.
func (c *cluster) breakGlass() string {
	c.t.Helper()
	ctr := c.start(testcontainers.ContainerRequest{
		Image:      image("GRAFT_IMAGE", "graft-graftd:dev"),
		Cmd:        append([]string{"break-glass", "--reason", "integration test", "--ttl", "1h"}, c.graftdArgs()...),
		Files:      c.keyringFile(),
		WaitingFor: wait.ForExit().WithExitTimeout(60 * time.Second),
	}, "break-glass")
	st, err := ctr.State(c.ctx)
	if err != nil || st.ExitCode != 0 {
		dumpLogs(c.t, "break-glass", ctr)
		c.t.Fatalf("break-glass exited %v (%v)", st, err)
	}
	rc, err := ctr.Logs(c.ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	defer rc.Close()
	out, _ := io.ReadAll(rc)
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "graft_") {
			return l
		}
	}
	c.t.Fatalf("break-glass printed no token:\n%s", out)
	return ""
}

// client connects the SDK from the host to a graftd container.
func (c *cluster) client(g testcontainers.Container, token string) *sdk.Client {
	c.t.Helper()
	host, err := g.Host(c.ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	port, err := g.MappedPort(c.ctx, "7420/tcp")
	if err != nil {
		c.t.Fatal(err)
	}
	cl, err := sdk.New(c.ctx, sdk.Config{Addr: fmt.Sprintf("%s:%s", host, port.Port()), Token: token, Insecure: true})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}
