package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// DockerAction restarts a container through the Docker Engine API, as
// `docker restart` does, and waits until it runs again (and is healthy, if
// its image or its run has a HEALTHCHECK).
type DockerAction struct {
	// Container is the container's name or id.
	Container string `yaml:"container"`
	// Host is the engine's address, such as unix:///var/run/docker.sock or
	// tcp://10.0.0.5:2376 (default: DOCKER_HOST, then the local socket;
	// DOCKER_TLS_VERIFY and DOCKER_CERT_PATH apply as for the docker CLI).
	Host string `yaml:"host"`
	// Timeout is how long the engine waits for the container to stop
	// before it kills it (default 10s, as `docker restart`), in whole
	// seconds.
	Timeout time.Duration `yaml:"timeout"`
}

// dockerRestarter runs a docker action, keeping its engine client across
// reloads.
type dockerRestarter struct {
	action *DockerAction

	// The engine client, made on the first restart.
	mu  sync.Mutex
	cli *client.Client
}

const (
	defaultDockerStop = 10 * time.Second
	// dockerReady bounds the wait for the restarted container to run and,
	// with a HEALTHCHECK, to be healthy (the health check's default).
	dockerReady = defaultHealthTTL
)

// containerNameRE is what the engine accepts as a container name
// (daemon/names: validContainerNamePattern); ids match it too.
var containerNameRE = regexp.MustCompile(`^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

func (d *DockerAction) validate(where string, add func(string, ...any)) {
	switch {
	case d.Container == "":
		add("%s: docker.container is required: the name or id of the container to restart (docker ps lists them)", where)
	case !containerNameRE.MatchString(d.Container):
		add("%s: docker.container %q: want a container name or id of [a-zA-Z0-9_.-], starting with a letter or digit", where, d.Container)
	}
	if d.Host != "" {
		if u, err := client.ParseHostURL(d.Host); err != nil || (u.Scheme != "unix" && u.Scheme != "tcp") {
			add("%s: docker.host %q: want unix:///path/to/docker.sock or tcp://host:port", where, d.Host)
		}
	}
	if d.Timeout < 0 {
		add("%s: docker.timeout must not be negative", where)
	}
}

// Kind is docker.
func (*dockerRestarter) Kind() string { return "docker" }

// engine returns the action's engine client, made on first use.
func (r *dockerRestarter) engine() (*client.Client, error) {
	d := r.action
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cli != nil {
		return r.cli, nil
	}
	opts := []client.Opt{client.FromEnv}
	if d.Host != "" {
		opts = append(opts, client.WithHost(d.Host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker: connect to the engine: %w (check docker.host, DOCKER_HOST and DOCKER_CERT_PATH)", err)
	}
	r.cli = cli
	return cli, nil
}

// Close releases the engine client's connections; the next restart makes
// a new client.
func (r *dockerRestarter) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cli != nil {
		r.cli.Close()
		r.cli = nil
	}
}

// Run restarts the container and waits until it runs again and, if it
// has a health check, is healthy.
func (r *dockerRestarter) Run(ctx context.Context) error {
	d := r.action
	cli, err := r.engine()
	if err != nil {
		return err
	}
	stop := d.Timeout
	if stop <= 0 {
		stop = defaultDockerStop
	}
	secs := int((stop + time.Second - 1) / time.Second)
	// The engine answers once the container has stopped (within the stop
	// timeout) and started again.
	rctx, cancel := context.WithTimeout(ctx, stop+30*time.Second)
	_, err = cli.ContainerRestart(rctx, d.Container, client.ContainerRestartOptions{Timeout: &secs})
	cancel()
	if err != nil {
		return d.explain(cli, "restart", err)
	}
	return d.waitReady(ctx, cli)
}

// waitReady polls the container until it runs, and is healthy if it has
// a health check, for up to dockerReady.
func (d *DockerAction) waitReady(parent context.Context, cli *client.Client) error {
	ctx, cancel := context.WithTimeout(parent, dockerReady)
	defer cancel()
	for {
		res, err := cli.ContainerInspect(ctx, d.Container, client.ContainerInspectOptions{})
		if err != nil {
			if parent.Err() == nil && ctx.Err() != nil {
				return fmt.Errorf("docker: container %s: no answer from the engine at %s within %s after the restart", d.Container, cli.DaemonHost(), dockerReady)
			}
			return d.explain(cli, "inspect", err)
		}
		st := res.Container.State
		if st == nil {
			return fmt.Errorf("docker: container %s: the engine reported no state after the restart", d.Container)
		}
		health := container.NoHealthcheck
		if st.Health != nil {
			health = st.Health.Status
		}
		switch {
		case st.Running && (health == container.NoHealthcheck || health == container.Healthy):
			return nil
		case st.Running && health == container.Unhealthy:
			return fmt.Errorf("docker: container %s is unhealthy after the restart (failing streak %d); see docker inspect --format '{{json .State.Health}}' %s", d.Container, st.Health.FailingStreak, d.Container)
		case !st.Running && !st.Restarting:
			return fmt.Errorf("docker: container %s is %s (exit status %d) after the restart; see docker logs %s", d.Container, st.Status, st.ExitCode, d.Container)
		}
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return parent.Err()
			}
			state := string(st.Status)
			if st.Running {
				state = "running, health " + string(health)
			}
			return fmt.Errorf("docker: container %s is not running and healthy %s after the restart (it is %s)", d.Container, dockerReady, state)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// explain turns an engine client error into one that says what to do.
func (d *DockerAction) explain(cli *client.Client, verb string, err error) error {
	host := cli.DaemonHost()
	switch {
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("docker: %s container %s: the engine at %s has no container of that name or id; check docker.container against `docker ps -a`", verb, d.Container, host)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("docker: %s container %s: no answer from the engine at %s in time: %w", verb, d.Container, host, err)
	case client.IsErrConnectionFailed(err) || errors.Is(err, os.ErrPermission):
		return fmt.Errorf("docker: %s container %s: %w", verb, d.Container, unreachable(host, err))
	}
	return fmt.Errorf("docker: %s container %s: %w", verb, d.Container, err)
}

// unreachable says why the engine at host cannot be reached. The client
// library keeps only the text of why it could not connect, so the address
// is dialed again to learn the cause.
func unreachable(host string, err error) error {
	cause := err
	if u, perr := client.ParseHostURL(host); perr == nil && (u.Scheme == "unix" || u.Scheme == "tcp") {
		c, derr := net.DialTimeout(u.Scheme, u.Host, time.Second)
		if derr == nil {
			c.Close()
		} else {
			cause = derr
		}
		switch {
		case u.Scheme == "unix" && (errors.Is(derr, os.ErrPermission) || errors.Is(err, os.ErrPermission)):
			return fmt.Errorf("permission denied on the Docker socket %s: the agent needs access to it (run it as root or in the socket's group, usually docker; in a container, mount /var/run/docker.sock into it)", u.Host)
		case u.Scheme == "unix" && errors.Is(derr, os.ErrNotExist):
			return fmt.Errorf("no Docker socket at %s: is the engine running there? (set docker.host or DOCKER_HOST to its address)", u.Host)
		}
	}
	return fmt.Errorf("cannot reach the Docker engine at %s: is it running there? (set docker.host or DOCKER_HOST to its address): %w", host, cause)
}
