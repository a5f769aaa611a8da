package leases

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the lease manager's: issues and revocations counted by
// result, and, read from etcd at each scrape, the reaper's backlog and
// switch.
type metrics struct {
	m       *Manager
	issues  *prometheus.CounterVec
	revokes *prometheus.CounterVec
	backlog *prometheus.Desc
	paused  *prometheus.Desc
}

// scrapeTimeout bounds the etcd reads of one scrape.
const scrapeTimeout = 2 * time.Second

func newMetrics(m *Manager, reg prometheus.Registerer) *metrics {
	mt := &metrics{
		m:       m,
		issues:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "graft_lease_issues_total", Help: "Dynamic credentials issued (ok) or refused (error: quota, database, state) by this graftd."}, []string{"result"}),
		revokes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "graft_lease_revocations_total", Help: "Revocations of leases run by this graftd (API and reaper), by result; an error is retried after its backoff."}, []string{"result"}),
		backlog: prometheus.NewDesc("graft_lease_reaper_backlog", "Leases due for the reaper now (expired, pending past their grace, or a failed revocation's retry due), over every graftd.", nil, nil),
		paused:  prometheus.NewDesc("graft_lease_reaper_paused", "1 while the reaper is paused (graft lease reaper pause).", nil, nil),
	}
	if reg != nil {
		reg.MustRegister(mt.issues, mt.revokes, mt)
	}
	return mt
}

func (mt *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- mt.backlog
	ch <- mt.paused
}

// Collect reads the due index and the reaper switch; a failed read
// leaves its metric out of the scrape rather than report a wrong value.
func (mt *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	if n, err := mt.m.due.CountRange(ctx, "", fmt.Sprintf("%019d", mt.m.cfg.Now().UnixNano()+1)); err == nil {
		ch <- prometheus.MustNewConstMetric(mt.backlog, prometheus.GaugeValue, float64(n))
	}
	if paused, err := mt.m.Paused(ctx); err == nil {
		v := 0.0
		if paused {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(mt.paused, prometheus.GaugeValue, v)
	}
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
