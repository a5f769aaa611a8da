package graftd_test

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/keyring"
)

// TestMetricsNeedATokenOffLoopback: /metrics names every rotation and
// whether it failed. On loopback it is open, as /healthz is; on any other
// address only a principal that may list / reads it.
func TestMetricsNeedATokenOffLoopback(t *testing.T) {
	dir := t.TempDir()
	etcd := testenv.StartEtcd(t, filepath.Join(dir, "etcd"))
	nats := testenv.StartNATS(t, filepath.Join(dir, "nats"))
	cfg := graftd.Defaults()
	cfg.DataDir = filepath.Join(dir, "graftd")
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTPListen = "0.0.0.0:0"
	cfg.Etcd.Endpoints = []string{etcd.Endpoint}
	cfg.NATS.URL = nats.URL
	cfg.KeyringFile = filepath.Join(dir, "keyring.json")
	cfg.EnablePprof = true
	if err := keyring.CreateFile(cfg.KeyringFile); err != nil {
		t.Fatal(err)
	}
	d, err := graftd.Start(context.Background(), cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	root, err := graftd.BreakGlass(context.Background(), cfg, testenv.Logger(t), time.Hour, "test metrics", "tester")
	if err != nil {
		t.Fatal(err)
	}
	c := graftdtest.Dial(t, d.Addr())
	var app *graftv1.CreateTokenResponse
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			break
		}
		if _, err = c.Policy.InitPolicies(authed(root), &graftv1.InitPoliciesRequest{}); err != nil {
			continue
		}
		app, err = c.Tokens.CreateToken(authed(root), &graftv1.CreateTokenRequest{Principal: "app:a", Roles: []string{"app"}})
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(d.HTTPAddr())
	get := func(path, token string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// The command line is not among them: it may hold a token.
	if got := get("/debug/pprof/cmdline", root); got != http.StatusNotFound {
		t.Errorf("/debug/pprof/cmdline = %d, want 404", got)
	}
	// --enable-pprof's profiles are for operators too.
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/goroutine?debug=1"} {
		for _, tt := range []struct {
			who, token string
			want       int
		}{
			{"no token", "", http.StatusUnauthorized},
			{"unknown token", "graft_nope", http.StatusUnauthorized},
			{"app", app.GetToken(), http.StatusForbidden},
			{"root", root, http.StatusOK},
		} {
			if got := get(path, tt.token); got != tt.want {
				t.Errorf("%s with %s = %d, want %d", path, tt.who, got, tt.want)
			}
		}
	}
	if code, _ := httpGet(t, "http://127.0.0.1:"+port+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d without a token", code)
	}
}
