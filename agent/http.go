package agent

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	renders  *prometheus.CounterVec
	reloads  *prometheus.CounterVec
	revision prometheus.Gauge
	health   prometheus.Gauge
	lag      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		renders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "graft_agent_renders_total", Help: "Template renders, by outcome (written, unchanged, failed).",
		}, []string{"outcome"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "graft_agent_reloads_total", Help: "Reload actions, by kind (signal, http, command, docker, kubernetes) and outcome (ok, failed: after its retries).",
		}, []string{"kind", "outcome"}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "graft_agent_applied_revision", Help: "The store revision of the tree the agent last rendered from.",
		}),
		health: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "graft_agent_healthy", Help: "1 if the health check passed after the last reload, 0 if it failed.",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "graft_agent_render_lag_seconds",
			Help:    "From the commit of a change to its file written: the source's commit for a replicated copy.",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	reg.MustRegister(m.renders, m.reloads, m.revision, m.health, m.lag)
	m.health.Set(1)
	return m
}

// serveHTTP answers /healthz, /readyz (once the first complete render is
// done) and /metrics on the agent's loopback listener until ctx ends.
func (a *Agent) serveHTTP(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "not ready: the first complete render is not done", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	// The endpoints only observe the agent: when they stop, the log says
	// so and the agent goes on rendering.
	if err := srv.Serve(a.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("the agent's HTTP endpoints stopped", "err", err)
	}
	<-stopped
	return nil
}
