package broker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the broker's, per listener.
type Metrics struct {
	open        *prometheus.GaugeVec
	total       *prometheus.CounterVec
	authFails   *prometheus.CounterVec
	bytesMoved  *prometheus.CounterVec
	sessionTime *prometheus.HistogramVec
	connectTime *prometheus.HistogramVec
	cancels     *prometheus.CounterVec
	gone        *prometheus.CounterVec
}

// NewMetrics registers the broker's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	l := []string{"listener"}
	m := &Metrics{
		open:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "graft_broker_connections_open", Help: "Client connections open through the broker."}, l),
		total:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "graft_broker_connections_total", Help: "Client connections accepted by the broker."}, l),
		authFails:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "graft_broker_auth_failures_total", Help: "Connections the broker could not log in to the database for."}, l),
		bytesMoved:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "graft_broker_bytes_total", Help: "Bytes relayed, by direction (to_database, to_client)."}, []string{"listener", "direction"}),
		sessionTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "graft_broker_session_seconds", Help: "How long client sessions last.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}, l),
		connectTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "graft_broker_backend_connect_seconds", Help: "Time to connect and log in to the database.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, l),
		cancels:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "graft_broker_cancel_requests_total", Help: "Cancel requests routed to the database."}, l),
		gone:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "graft_broker_backend_closed_total", Help: "Sessions the database ended before the client did."}, l),
	}
	reg.MustRegister(m.open, m.total, m.authFails, m.bytesMoved, m.sessionTime, m.connectTime, m.cancels, m.gone)
	return m
}

func (m *Metrics) opened(l string) {
	if m != nil {
		m.open.WithLabelValues(l).Inc()
		m.total.WithLabelValues(l).Inc()
	}
}

func (m *Metrics) closed(l string, d time.Duration) {
	if m != nil {
		m.open.WithLabelValues(l).Dec()
		m.sessionTime.WithLabelValues(l).Observe(d.Seconds())
	}
}

func (m *Metrics) authFailed(l string) {
	if m != nil {
		m.authFails.WithLabelValues(l).Inc()
	}
}

func (m *Metrics) bytes(l, dir string, n int64) {
	if m != nil {
		m.bytesMoved.WithLabelValues(l, dir).Add(float64(n))
	}
}

func (m *Metrics) connected(l string, d time.Duration) {
	if m != nil {
		m.connectTime.WithLabelValues(l).Observe(d.Seconds())
	}
}

func (m *Metrics) cancelled(l string) {
	if m != nil {
		m.cancels.WithLabelValues(l).Inc()
	}
}

func (m *Metrics) backendGone(l string) {
	if m != nil {
		m.gone.WithLabelValues(l).Inc()
	}
}
