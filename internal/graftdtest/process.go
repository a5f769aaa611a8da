package graftdtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/testenv"
)

// processEnv names the configuration file of a graftd that StartProcess
// runs: the test binary, started again with it set, is that graftd.
const processEnv = "GRAFTDTEST_PROCESS"

// readyLine begins the line a graftd process prints once it serves,
// followed by its gRPC and HTTP addresses.
const readyLine = "graftdtest: serving"

// Main makes the test binary the graftd that StartProcess starts: in
// such a process it serves until SIGTERM or SIGINT and exits; otherwise
// it returns at once. A package that uses StartProcess calls it first in
// its TestMain.
func Main() {
	if file := os.Getenv(processEnv); file != "" {
		os.Exit(serveProcess(file))
	}
}

// processFile is what a graftd process reads at start: its
// configuration, and where it halts.
type processFile struct {
	Config graftd.Config
	Halt   Halt
}

func serveProcess(file string) int {
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintf(os.Stderr, "graftdtest: %v\n", err)
		return 2
	}
	var pf processFile
	if err := json.Unmarshal(data, &pf); err != nil {
		fmt.Fprintf(os.Stderr, "graftdtest: %s: %v\n", file, err)
		return 2
	}
	cfg := pf.Config
	if pf.Halt != "" {
		cfg.Leases.Open = pf.Halt.open
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	d, err := graftd.New(ctx, cfg, graftd.NewLogger(cfg, os.Stderr))
	if err != nil {
		fmt.Fprintf(os.Stderr, "graftd: %v\n", err)
		return 1
	}
	go func() {
		select {
		case <-d.Ready():
			fmt.Printf("%s %s %s\n", readyLine, d.Addr(), d.HTTPAddr())
		case <-ctx.Done():
		}
	}()
	if d.Run(ctx) != nil {
		return 1
	}
	return 0
}

// process is the graftd process of a Graftd that StartProcess started.
type process struct {
	file string // the configuration the process reads
	logs testenv.Buffer

	mu      sync.Mutex
	cmd     *exec.Cmd // nil while graftd is down
	exited  chan struct{}
	started int

	// halt is where the first process halts, and halted is closed once
	// it says it has (StartProcessHalting).
	halt       Halt
	halted     chan struct{}
	haltedOnce sync.Once
}

// StartProcess runs graftd as a process of its own until the test ends:
// the test binary again, whose TestMain must call Main first. Unlike
// Start's, this graftd can be killed (Kill) and started again
// (StartAgain) on the same data and addresses, as a crash and a
// supervisor's restart would; its log is shown when the test fails.
func StartProcess(t testing.TB, opts ...Option) *Graftd {
	t.Helper()
	return startProcess(t, "", opts)
}

func startProcess(t testing.TB, halt Halt, opts []Option) *Graftd {
	t.Helper()
	cfg := graftd.DevConfig(t.TempDir())
	cfg.ShutdownTimeout = 5 * time.Second
	for _, o := range opts {
		o(&cfg)
	}
	g := &Graftd{cfg: cfg, Token: cfg.DevRootToken, proc: &process{file: filepath.Join(t.TempDir(), "graftd.json"), halt: halt}}
	if halt != "" {
		g.proc.halted = make(chan struct{})
	}
	g.proc.start(t, g)
	t.Cleanup(func() {
		g.stop()
		logs := g.proc.logs.String()
		if strings.Contains(logs, "WARNING: DATA RACE") {
			t.Errorf("the graftd process reported a data race:\n%s", logs)
		} else if t.Failed() {
			t.Logf("the graftd process's log:\n%s", logs)
		}
	})
	return g
}

// start runs graftd with g's configuration and waits until it serves.
// The first start fixes the addresses; later ones must come back on
// them.
func (p *process) start(t testing.TB, g *Graftd) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		t.Fatal("graftdtest: graftd is running already: Kill or Stop it first")
	}
	p.started++
	n := p.started
	pf := processFile{Config: g.cfg}
	if n == 1 {
		pf.Halt = p.halt
	}
	data, err := json.Marshal(pf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.file, data, 0o600); err != nil { // it holds the root token
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), processEnv+"="+p.file)
	cmd.Stderr = &p.logs
	// A test binary that dies takes its graftd along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&p.logs, "graftdtest: graftd process %d (pid %d) starts\n", n, cmd.Process.Pid)
	ready, exited := make(chan []string, 1), make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if addrs, ok := strings.CutPrefix(sc.Text(), readyLine+" "); ok {
				ready <- strings.Fields(addrs)
			}
			if strings.HasPrefix(sc.Text(), haltedLine+" ") && p.halted != nil {
				p.haltedOnce.Do(func() { close(p.halted) })
			}
		}
		err := cmd.Wait()
		fmt.Fprintf(&p.logs, "graftdtest: graftd process %d ended: %v\n", n, err)
	}()
	var addrs []string
	select {
	case addrs = <-ready:
	case <-exited:
		t.Fatalf("graftd exited before it served:\n%s", p.logs.String())
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("graftd did not serve within 2 minutes:\n%s", p.logs.String())
	}
	p.cmd, p.exited = cmd, exited
	if len(addrs) != 2 {
		t.Fatalf("graftd said it serves on %q: want its gRPC and HTTP addresses", addrs)
	}
	if g.Addr == "" {
		g.Addr, g.HTTPAddr = addrs[0], addrs[1]
		g.cfg.Listen, g.cfg.HTTPListen = g.Addr, g.HTTPAddr
	} else if addrs[0] != g.Addr || addrs[1] != g.HTTPAddr {
		t.Fatalf("graftd came back on %v, not on %s and %s", addrs, g.Addr, g.HTTPAddr)
	}
}

// Kill ends graftd with SIGKILL, as a crash or the OOM killer would: it
// saves nothing, gives no lease or leadership up, and drops every
// connection. It returns once the process is gone; StartAgain brings
// graftd back. Kill may be called from any goroutine, which is why it
// reports an error rather than failing the test.
func (g *Graftd) Kill() error {
	p := g.proc
	if p == nil {
		return errors.New("graftdtest: Kill needs a graftd that StartProcess started")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return errors.New("graftdtest: Kill: graftd is not running")
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("graftdtest: kill graftd: %w", err)
	}
	<-p.exited
	p.cmd = nil
	return nil
}

// terminate stops graftd as SIGTERM does, and kills it when it has not
// stopped within timeout.
func (p *process) terminate(timeout time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		fmt.Fprintf(&p.logs, "graftdtest: graftd did not stop within %s of SIGTERM; killing it\n", timeout)
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

// devKeyringFile is the keyring file of a dev graftd with cfg.
func devKeyringFile(cfg graftd.Config) string {
	if cfg.KeyringFile != "" {
		return cfg.KeyringFile
	}
	return filepath.Join(cfg.DataDir, "keyring.json")
}
