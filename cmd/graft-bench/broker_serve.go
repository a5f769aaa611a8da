package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/metrics"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/broker"
	"github.com/graft-sh/graft/internal/cmdline"
)

// brokerPasswordEnv carries the database password to the broker's
// process: an argument would show in ps.
const brokerPasswordEnv = "GRAFT_BENCH_BROKER_PASSWORD"

// brokerServeCmd is the broker graft-bench broker measures, as a process
// of its own so that its CPU time and resident memory are its alone: a
// broker.Postgres as graft-agent builds one (metrics on, no client TLS,
// plaintext to a loopback database), with a static credential. It prints
// "broker <addr> debug <addr>" once it listens, and serves its CPU
// profile and its Go memory on the debug address.
func (a *app) brokerServeCmd() *cobra.Command {
	var backend, user string
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "Run the broker that graft-bench broker measures (started by it)",
		Hidden: true,
		Args:   cmdline.Args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serveBroker(cmd.Context(), cmd.OutOrStdout(), backend, user, os.Getenv(brokerPasswordEnv))
		},
	}
	cmd.Flags().StringVar(&backend, "backend", "", "the database's host:port")
	cmd.Flags().StringVar(&user, "user", "", "the database user the broker logs in as ($"+brokerPasswordEnv+" is its password)")
	return cmd
}

func serveBroker(ctx context.Context, out io.Writer, backend, user, password string) error {
	if user == "" || password == "" {
		return errors.New("broker serve: --user and $" + brokerPasswordEnv + " are required")
	}
	cred := broker.Credential{User: user, Password: password, Revision: 1, Source: "graft-bench broker"}
	pg, err := broker.NewPostgres(broker.PostgresConfig{
		Backend: backend, TLSMode: broker.TLSDisable,
		Credentials: broker.CredentialsFunc(func(context.Context) (broker.Credential, error) { return cred, nil }),
		Log:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Metrics:     broker.NewMetrics(prometheus.NewRegistry()),
		Name:        "bench",
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	dbg, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/memory", serveGoMemory)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(dbg)
	defer srv.Close()
	if _, err := fmt.Fprintf(out, "broker %s debug %s\n", ln.Addr(), dbg.Addr()); err != nil {
		ln.Close()
		return err
	}
	return pg.Serve(ctx, ln)
}

// goMemory is the broker process's Go memory after a collection: what
// its live objects and its goroutines' stacks take.
type goMemory struct {
	HeapBytes  float64 `json:"heap_bytes"`
	StackBytes float64 `json:"stack_bytes"`
	Goroutines float64 `json:"goroutines"`
	GOMAXPROCS int     `json:"gomaxprocs"`
}

func serveGoMemory(w http.ResponseWriter, _ *http.Request) {
	runtime.GC()
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	metrics.Read(samples)
	value := func(s metrics.Sample) float64 {
		if s.Value.Kind() == metrics.KindUint64 {
			return float64(s.Value.Uint64())
		}
		return 0
	}
	m := goMemory{HeapBytes: value(samples[0]), StackBytes: value(samples[1]), Goroutines: value(samples[2]), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(m)
}

// readBrokerAddrs reads the line serveBroker prints once it listens.
func readBrokerAddrs(r *bufio.Reader) (addr, debug string, err error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", "", err
	}
	if _, err := fmt.Sscanf(line, "broker %s debug %s", &addr, &debug); err != nil {
		return "", "", fmt.Errorf("unexpected first line %q", line)
	}
	return addr, debug, nil
}
