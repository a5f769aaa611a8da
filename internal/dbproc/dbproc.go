// Package dbproc runs a database server for a test as a process of its
// own: as the server's system user when the test runs as root (servers
// refuse root), stopped by the kernel should the test binary die, on a
// free loopback port, with its log's tail for a failed test.
// internal/pgtest and internal/mysqltest build on it.
package dbproc

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Unavailable skips t, or fails it when the environment variable env is
// "1": CI promises the server, and a missing one must not pass as a skip.
func Unavailable(t testing.TB, pkg, env, reason string) {
	t.Helper()
	if os.Getenv(env) == "1" {
		t.Fatalf("%s: %s (%s=1)", pkg, reason, env)
	}
	t.Skipf("%s: %s; set %s=1 to fail instead", pkg, reason, env)
}

// RunAs is the identity a server runs as: nil (this process's) unless this
// process is root, then system user name's; hint says how to create it.
func RunAs(name, hint string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root needs a %s system user for the server (%s): %w", name, hint, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Chown gives names to cred's user; with cred nil it does nothing.
func Chown(cred *syscall.Credential, names ...string) error {
	if cred == nil {
		return nil
	}
	for _, name := range names {
		if err := os.Chown(name, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	return nil
}

// Command runs prog as cred, in the C locale and UTC. The kernel sends it
// deathSig if this process dies (Pdeathsig, which Go sets after the
// change of user; a server that changed user itself would lose it), so a
// killed test binary leaves no server behind.
func Command(prog string, cred *syscall.Credential, deathSig syscall.Signal, args ...string) *exec.Cmd {
	cmd := exec.Command(prog, args...)
	cmd.SysProcAttr = SysProcAttr(cred, deathSig)
	cmd.Env = []string{"LC_ALL=C", "TZ=UTC"}
	return cmd
}

// Process is a started server.
type Process struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start starts cmd and follows its exit.
func Start(cmd *exec.Cmd) (*Process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	return p, nil
}

// Exited is closed once the server has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// ErrPortTaken says the server exited because another process took its
// port first: start it again on another.
var ErrPortTaken = errors.New("the port was taken")

// AwaitReady calls ready every 20 ms until it succeeds. It fails when the
// server exits first (ErrPortTaken if portTaken says why), or after 30 s,
// then stopping the server with stopSig.
func (p *Process) AwaitReady(name string, ready func() error, portTaken func() bool, stopSig syscall.Signal) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			if portTaken() {
				return ErrPortTaken
			}
			return fmt.Errorf("%s exited during start (%s)", name, p.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop(stopSig)
			return fmt.Errorf("%s did not accept connections within 30s: %w", name, err)
		}
	}
}

// Stop sends sig (the server's own shutdown signal), then kills the server
// if it is still there after 10 s.
func (p *Process) Stop(sig syscall.Signal) {
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// Tail is the last n lines of log.
func Tail(log string, n int) string {
	lines := strings.Split(strings.TrimSuffix(log, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// RandomHex is n random bytes in hex: passwords and names for tests.
func RandomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// FreePort is a loopback TCP port nothing listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// CheckSkipsWithout proves that the tests matching run skip, and do not
// fail, on a machine without the server, and fail when the environment
// promises it. It runs this test binary again twice, without t itself:
// with hide set (variables that point the helpers at a directory without
// the server's programs, e.g. GRAFT_PG_BINDIR=/nonexistent), which must
// pass having skipped at least one test; then with require=1 added too
// (GRAFT_REQUIRE_PG), which must fail. A parent test that fails because
// its subtest skipped, or a helper that fails where it should skip, fails
// the first run.
func CheckSkipsWithout(t *testing.T, run string, hide []string, require string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the package's tests again")
	}
	// CI promises every server (GRAFT_REQUIRE_PG=1 GRAFT_REQUIRE_MYSQL=1):
	// the first run must see none of those promises.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GRAFT_REQUIRE_") {
			env = append(env, kv)
		}
	}
	env = append(env, hide...)
	child := func(env []string) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run="+run, "-test.skip=^"+t.Name()+"$", "-test.v", "-test.count=1")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := child(env)
	if err != nil {
		t.Fatalf("with %v the tests %s failed instead of skipping: %v\n%s", hide, run, err, out)
	}
	if !strings.Contains(out, "--- SKIP: ") {
		t.Fatalf("with %v no test of %s skipped:\n%s", hide, run, out)
	}
	out, err = child(append(env, require+"=1"))
	if err == nil || !strings.Contains(out, require+"=1") {
		t.Fatalf("with %v and %s=1 the tests %s did not fail for the missing server (%v):\n%s", hide, require, run, err, out)
	}
}
