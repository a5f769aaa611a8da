package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdConfig says how to reach etcd.
type EtcdConfig struct {
	Endpoints []string
	TLS       *tls.Config
	Username  string
	Password  string
	// DialTimeout bounds the first connection; default 5s.
	DialTimeout time.Duration
}

func dial(cfg EtcdConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         cfg.TLS,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, nil
}

// Endpoints are the etcd client URLs the store uses.
func (s *Store) Endpoints() []string { return s.cli.Endpoints() }

// Close ends the store's lease renewals, and closes the etcd connection
// if the store opened it (Config.Etcd); a client passed in
// (Config.Client) is its owner's to close.
func (s *Store) Close() error {
	if s.renew != nil {
		s.renew.close()
	}
	if !s.ownsClient {
		return nil
	}
	return s.cli.Close()
}

// Floor measures etcd itself doing by hand what replication does for one
// write: put a source key, put a destination key, and see the
// destination's watch event, samples times. It dials etcd with cfg and
// works under the key prefix scratch, outside graft's own keys, which it
// deletes afterwards. graft-bench reports replication against it.
func Floor(ctx context.Context, cfg EtcdConfig, scratch string, samples int) ([]time.Duration, error) {
	cli, err := dial(cfg)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return floor(ctx, cli, scratch, samples)
}

// Floor is the package's Floor on the store's own etcd client: in dev
// mode the in-process one graftd uses, so that the floor and replication
// reach etcd the same way.
func (s *Store) Floor(ctx context.Context, scratch string, samples int) ([]time.Duration, error) {
	return floor(ctx, s.cli, scratch, samples)
}

func floor(ctx context.Context, cli *clientv3.Client, scratch string, samples int) ([]time.Duration, error) {
	k1, k2 := scratch+"/source", scratch+"/dest"
	defer cli.Delete(context.WithoutCancel(ctx), scratch+"/", clientv3.WithPrefix())
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	wch := cli.Watch(wctx, k2, clientv3.WithCreatedNotify())
	if _, ok := <-wch; !ok {
		return nil, fmt.Errorf("etcd watch at %v did not start", cli.Endpoints())
	}
	out := make([]time.Duration, 0, samples)
	for i := range max(samples, 1) {
		v := strconv.Itoa(i)
		t0 := time.Now()
		if _, err := cli.Put(ctx, k1, v); err != nil {
			return nil, err
		}
		if _, err := cli.Put(ctx, k2, v); err != nil {
			return nil, err
		}
		for got := false; !got; {
			resp, ok := <-wch
			if !ok {
				return nil, errors.New("etcd watch ended")
			}
			for _, e := range resp.Events {
				got = got || string(e.Kv.Value) == v
			}
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}
