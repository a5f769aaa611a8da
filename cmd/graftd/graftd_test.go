package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/agent"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/sdk"
)

// These tests run the real graftd binary and kill it, because only a
// separate process shows what survives a crash.

var binary struct {
	once sync.Once
	path string
	err  error
}

func graftdBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		dir, err := os.MkdirTemp("", "graftd-bin-")
		if err != nil {
			binary.err = err
			return
		}
		binary.path = filepath.Join(dir, "graftd")
		out, err := exec.Command("go", "build", "-o", binary.path, ".").CombinedOutput()
		if err != nil {
			binary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary.path != "" {
		os.RemoveAll(filepath.Dir(binary.path))
	}
	os.Exit(code)
}

type proc struct {
	cmd    *exec.Cmd
	stderr *strings.Builder
	mu     *sync.Mutex
	exited chan error
}

// startGraftd runs graftd --dev and waits until it reports ready.
func startGraftd(t *testing.T, dataDir, addr, token string) *proc {
	t.Helper()
	cmd := exec.Command(graftdBinary(t), "--dev", "--data-dir", dataDir, "--listen", addr,
		"--http-listen", "127.0.0.1:0", "--dev-root-token", token, "--log-level", "info")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stderr: &strings.Builder{}, mu: &sync.Mutex{}, exited: make(chan error, 1)}
	cmd.Stderr = lockedWriter{p}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "export GRAFT_TOKEN") {
				close(ready)
			}
		}
	}()
	go func() { p.exited <- cmd.Wait() }()
	select {
	case <-ready:
	case err := <-p.exited:
		t.Fatalf("graftd exited before ready: %v\n%s", err, p.logs())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("graftd not ready after 30s\n%s", p.logs())
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

type lockedWriter struct{ p *proc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.stderr.Write(b)
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

func client(t *testing.T, addr, token string) (graftv1.KVServiceClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return graftv1.NewKVServiceClient(conn), metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

func TestKillLosesNoAcknowledgedWrite(t *testing.T) {
	dir, addr, token := t.TempDir(), testenv.FreeAddr(t), "graft_kill-test-token"
	p := startGraftd(t, dir, addr, token)
	kv, ctx := client(t, addr, token)

	// Four writers each write their own keys as fast as they can; an
	// acknowledged write is recorded with the revision graftd returned.
	type ack struct {
		path, value string
		rev         int64
	}
	var (
		mu    sync.Mutex
		acked = map[string]ack{}
		total int
		wg    sync.WaitGroup
	)
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path := fmt.Sprintf("/dba/kill/w%d/k%d", w, i%50)
				value := fmt.Sprintf("w%d-%d", w, i)
				wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				resp, err := kv.Put(wctx, &graftv1.PutRequest{Path: path, Value: []byte(value)})
				cancel()
				if err != nil {
					continue // not acknowledged: no promise was made
				}
				mu.Lock()
				acked[path] = ack{path, value, resp.GetEntry().GetRevision()}
				total++
				mu.Unlock()
			}
		}()
	}
	testenv.WaitFor(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return total >= 500 })
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	close(stop)
	wg.Wait()

	startGraftd(t, dir, addr, token)
	kv, ctx = client(t, addr, token)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d writes acknowledged before SIGKILL; checking the last one on each of %d paths", total, len(acked))
	for _, a := range acked {
		// A later write to the same path may have committed without its
		// acknowledgement reaching us; the acknowledged one must still be
		// there, in history if not current.
		cur, err := kv.Get(ctx, &graftv1.GetRequest{Path: a.path})
		if err != nil {
			t.Fatalf("acknowledged write to %s lost: %v", a.path, err)
		}
		if cur.GetEntry().GetRevision() < a.rev {
			t.Errorf("%s went backwards: revision %d, acknowledged %d", a.path, cur.GetEntry().GetRevision(), a.rev)
		}
		got, err := kv.Get(ctx, &graftv1.GetRequest{Path: a.path, Revision: a.rev})
		if err != nil || string(got.GetEntry().GetValue()) != a.value {
			t.Errorf("%s at acknowledged revision %d: %v, want %q", a.path, a.rev, err, a.value)
		}
	}
}

func TestSIGTERMShutsDownGracefully(t *testing.T) {
	dir, addr, token := t.TempDir(), testenv.FreeAddr(t), "graft_term-test-token"
	p := startGraftd(t, dir, addr, token)
	kv, ctx := client(t, addr, token)
	if _, err := kv.Put(ctx, &graftv1.PutRequest{Path: "/a/b", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	stream, err := kv.Watch(ctx, &graftv1.WatchRequest{Prefix: "/a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "shutting down") {
		t.Errorf("watch ended with %v, want Unavailable saying graftd is shutting down", err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("graftd exited with %v after SIGTERM\n%s", err, p.logs())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("graftd did not exit within 15s of SIGTERM")
	}
	if logs := p.logs(); !strings.Contains(logs, "graftd stopped") {
		t.Errorf("no clean stop in the logs:\n%s", logs)
	}
	// The data survives a clean stop too.
	startGraftd(t, dir, addr, token)
	kv, ctx = client(t, addr, token)
	if got, err := kv.Get(ctx, &graftv1.GetRequest{Path: "/a/b"}); err != nil || string(got.GetEntry().GetValue()) != "v" {
		t.Fatalf("after restart: %v %v", got, err)
	}
}

// A second graftd --dev on a data directory in use exits at once with one
// line that names the holder and what to do; before, it waited for ever on
// the embedded etcd's lock and ignored SIGINT and SIGTERM.
func TestSecondGraftdOnTheSameDataExits(t *testing.T) {
	dir := t.TempDir()
	first := startGraftd(t, dir, testenv.FreeAddr(t), "graft_first-token")
	cmd := exec.Command(graftdBinary(t), "--dev", "--data-dir", dir, "--listen", testenv.FreeAddr(t), "--http-listen", "127.0.0.1:0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("second graftd: %v, want exit status 1\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("a second graftd on the same data dir was still running after 10s\n%s", stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	last := lines[len(lines)-1]
	want := fmt.Sprintf("another graftd (pid %d)", first.cmd.Process.Pid)
	if !strings.HasPrefix(last, "graftd: data directory in use: ") || !strings.Contains(last, want) || !strings.Contains(last, "--data-dir") {
		t.Fatalf("last line %q; want it to say the data directory is in use by %s and what to do", last, want)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the second graftd took %s to give up", d)
	}
}

// Ctrl-C ends `make run` cleanly: graftd shuts down and exits 0, without
// the "make: *** [run] Error 1" that `go run` (which exits 1 after an
// interrupt) used to cause.
func TestMakeRunStopsCleanlyOnCtrlC(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make on this machine")
	}
	flags := fmt.Sprintf("GRAFTD_FLAGS=--data-dir %s --listen %s --http-listen 127.0.0.1:0", t.TempDir(), testenv.FreeAddr(t))
	cmd := exec.Command("make", "--no-print-directory", "-C", "../..", "run", flags)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches the whole group
	var out strings.Builder
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready, scanned := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "export GRAFT_TOKEN") {
				close(ready)
			}
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("make run ended before graftd was ready: %v", err)
	case <-time.After(2 * time.Minute):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatal("graftd not ready under make run after 2 minutes")
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		// make itself takes the Ctrl-C as any interrupted command does
		// (it ends by the signal once its recipe is done), so the
		// shell's $? is 130; what must not happen is a failed recipe.
		var exit *exec.ExitError
		if err != nil && !(errors.As(err, &exit) && exit.ProcessState.Sys().(syscall.WaitStatus).Signal() == syscall.SIGINT) {
			t.Errorf("make run after Ctrl-C: %v; want a clean exit or the interrupt itself", err)
		}
	case <-time.After(15 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatal("make run still running 15s after Ctrl-C")
	}
	<-scanned
	logs := out.String()
	if strings.Contains(logs, "make: ***") || !strings.Contains(logs, "graftd stopped") || !strings.Contains(logs, `msg="shutting down" signal=interrupt`) {
		t.Errorf("make run's output after Ctrl-C, want a clean stop and no make error:\n%s", logs)
	}
}

// graftd --dev opens no port but its own two: its embedded etcd and NATS,
// which have no authentication, are reached in process, so no other local
// process can read the token records or delete the audit stream through
// them.
func TestDevOpensOnlyItsOwnTwoPorts(t *testing.T) {
	addr := testenv.FreeAddr(t)
	p := startGraftd(t, t.TempDir(), addr, "graft_ports-test-token")
	got := listeners(t, p.cmd.Process.Pid)
	var grpcSeen, httpSeen int
	for _, l := range got {
		switch {
		case l == "tcp "+addr:
			grpcSeen++
		case strings.HasPrefix(l, "tcp 127.0.0.1:"):
			httpSeen++
		}
	}
	if len(got) != 2 || grpcSeen != 1 || httpSeen != 1 {
		t.Fatalf("graftd --dev listens on %v; want only its gRPC (%s) and HTTP listeners", got, addr)
	}
}

// listeners returns what process pid listens on, as "tcp ADDR", "udp ADDR"
// or "unix PATH", from /proc: the sockets among its descriptors that are
// in the listening state (any UDP socket counts).
func listeners(t *testing.T, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var out []string
	for _, table := range []struct{ file, kind string }{{"tcp", "tcp"}, {"tcp6", "tcp"}, {"udp", "udp"}, {"udp6", "udp"}, {"unix", "unix"}} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table.file))
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			f := strings.Fields(line)
			if i == 0 || len(f) < 7 {
				continue
			}
			switch table.kind {
			case "unix": // Num RefCount Protocol Flags Type St Inode [Path]
				if inodes[f[6]] && f[3] == "00010000" { // __SO_ACCEPTCON: listening
					path := ""
					if len(f) > 7 {
						path = f[7]
					}
					out = append(out, "unix "+path)
				}
			default: // sl local rem st ... uid timeout inode
				if len(f) < 10 || !inodes[f[9]] || (table.kind == "tcp" && f[3] != "0A") {
					continue
				}
				out = append(out, table.kind+" "+procAddr(f[1]))
			}
		}
	}
	return out
}

// procAddr turns /proc/net's "0100007F:1F40" into "127.0.0.1:8000".
func procAddr(s string) string {
	host, port, _ := strings.Cut(s, ":")
	p, _ := strconv.ParseUint(port, 16, 16)
	b, _ := hex.DecodeString(host)
	if len(b) == 4 {
		return fmt.Sprintf("%d.%d.%d.%d:%d", b[3], b[2], b[1], b[0], p)
	}
	return fmt.Sprintf("[%x]:%d", b, p)
}

// An agent following graftd across a SIGKILL loses no change and reloads
// no content twice: a writer changes the DBA's value without pause while
// graftd is killed and started again, and every reload the agent runs
// sees a newer value than the one before, ending with the value graftd
// holds.
func TestAgentResumesAfterGraftdIsKilled(t *testing.T) {
	dir, addr, token := t.TempDir(), testenv.FreeAddr(t), "graft_agent-kill-test-token"
	p := startGraftd(t, dir, addr, token)
	ctx := t.Context()
	root, err := sdk.New(ctx, sdk.Config{Addr: addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.Put(ctx, "/dba/mp/password", []byte("0")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := root.Share(ctx, "/dba/mp", []string{"/app/mp/replicated/db"}, sdk.ShareOptions{}); err != nil {
		t.Fatal(err)
	}
	appToken, _, err := root.CreateToken(ctx, "app:mp", []string{"app"}, 0)
	if err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	tokenFile, out, reloads := filepath.Join(work, "token"), filepath.Join(work, "password"), filepath.Join(work, "reloads")
	if err := os.WriteFile(tokenFile, []byte(appToken), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := agent.DefaultConfig()
	cfg.Server, cfg.TokenFile, cfg.App, cfg.Listen = addr, tokenFile, "mp", "off"
	cfg.Templates = []agent.Template{{Destination: out, Contents: `{{ secret "replicated/db/password" }}`}}
	// Each reload records the content it was run for.
	cfg.Reload = []agent.Action{{Command: []string{"/bin/sh", "-c", fmt.Sprintf("cat %s >> %s && echo >> %s", out, reloads, reloads)}}}
	cfg.Wait = agent.Wait{Min: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	actx, cancel := context.WithCancel(context.Background())
	a, err := agent.New(actx, cfg, testenv.Logger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.Run(actx) }()
	defer func() { cancel(); <-done }()
	testenv.WaitFor(t, 10*time.Second, a.Ready)

	// The writer counts up; an error (graftd away) is no promise either
	// way, so it just goes on with the next number.
	var acked atomic.Int64
	stop, wrote := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(wrote)
		for i := int64(1); ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			wctx, wcancel := context.WithTimeout(ctx, time.Second)
			if _, err := root.Put(wctx, "/dba/mp/password", []byte(strconv.FormatInt(i, 10))); err == nil {
				acked.Store(i)
			}
			wcancel()
		}
	}()
	testenv.WaitFor(t, 10*time.Second, func() bool { return acked.Load() >= 40 })
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	killedAt := acked.Load()
	time.Sleep(300 * time.Millisecond) // the agent and the writer find graftd gone
	startGraftd(t, dir, addr, token)
	testenv.WaitFor(t, 20*time.Second, func() bool { return acked.Load() >= killedAt+40 })
	close(stop)
	<-wrote

	final, err := root.Get(ctx, "/dba/mp/password")
	if err != nil {
		t.Fatal(err)
	}
	want := string(final.Value)
	if n, _ := strconv.ParseInt(want, 10, 64); n < acked.Load() {
		t.Fatalf("graftd holds %s, older than the acknowledged %d", want, acked.Load())
	}
	testenv.WaitFor(t, 20*time.Second, func() bool { data, _ := os.ReadFile(out); return string(data) == want })
	time.Sleep(300 * time.Millisecond) // a reload still to come would show now

	data, err := os.ReadFile(reloads)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(data))
	prev := int64(-1)
	for _, l := range lines {
		n, err := strconv.ParseInt(l, 10, 64)
		if err != nil {
			t.Fatalf("reload log line %q", l)
		}
		if n <= prev {
			t.Fatalf("reloaded for %d after %d: a content reloaded twice, or an older value over a newer one (log %v)", n, prev, lines)
		}
		prev = n
	}
	if lines[len(lines)-1] != want {
		t.Fatalf("last reload for %s, want %s", lines[len(lines)-1], want)
	}
	t.Logf("%d writes acknowledged (%d before SIGKILL), %d reloads, ending at %s", acked.Load(), killedAt, len(lines), want)
}
