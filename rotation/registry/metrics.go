package registry

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/graft-sh/graft/rotation"
)

// Collector exports every rotation's health as gauges, read from etcd at
// each scrape, so that whichever graftd is scraped tells the truth:
// graft_rotation_overdue (no success for more than two periods),
// graft_rotation_stalled (a step has outlived its timeout: no rotator
// runs it), graft_rotation_failed (the last run failed or rolled back),
// and graft_rotation_last_success_timestamp_seconds.
type Collector struct {
	r                                  *Registry
	overdue, stalled, failed, lastGood *prometheus.Desc
	up                                 *prometheus.Desc
}

// NewCollector returns the registry's collector.
func NewCollector(r *Registry) *Collector {
	label := []string{"rotation"}
	return &Collector{
		r:        r,
		overdue:  prometheus.NewDesc("graft_rotation_overdue", "1 when the rotation has not succeeded for more than two of its periods.", label, nil),
		stalled:  prometheus.NewDesc("graft_rotation_stalled", "1 when the rotation's step in progress has outlived its timeout, or a run asked for has not begun: no rotator runs it.", label, nil),
		failed:   prometheus.NewDesc("graft_rotation_failed", "1 when the rotation's last run failed (and rolled back).", label, nil),
		lastGood: prometheus.NewDesc("graft_rotation_last_success_timestamp_seconds", "When the rotation last completed a run, as a Unix time; 0 before its first.", label, nil),
		up:       prometheus.NewDesc("graft_rotation_scrape_ok", "1 when the rotations could be read for this scrape.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.overdue, c.stalled, c.failed, c.lastGood, c.up} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	all, err := c.r.List(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	for _, rot := range all {
		st, name := rot.State, rot.Spec.Name
		ch <- prometheus.MustNewConstMetric(c.overdue, prometheus.GaugeValue, bit(st.Overdue), name)
		ch <- prometheus.MustNewConstMetric(c.stalled, prometheus.GaugeValue, bit(st.Stalled), name)
		ch <- prometheus.MustNewConstMetric(c.failed, prometheus.GaugeValue, bit(st.Phase == rotation.PhaseFailed), name)
		var last float64
		if !st.LastSuccess.IsZero() {
			last = float64(st.LastSuccess.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(c.lastGood, prometheus.GaugeValue, last, name)
	}
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
