package graftd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func load(t *testing.T, file string, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("graftd", pflag.ContinueOnError)
	loader := Flags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return loader(file, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "graftd.yaml")
	os.WriteFile(file, []byte("history_limit: 7\nmax_value_bytes: 1000\nlog_level: warn\netcd:\n  endpoints: [http://a:2379]\nnats:\n  url: nats://a:4222\nkeyring_file: keyring.json\n"), 0o600)
	cfg, err := load(t, file,
		map[string]string{"GRAFT_MAX_VALUE_BYTES": "2000", "GRAFT_LOG_LEVEL": "error", "GRAFT_ETCD_ENDPOINTS": "http://b:2379,http://c:2379"},
		"--log-level=debug")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HistoryLimit != 7 {
		t.Errorf("file: history_limit = %d, want 7", cfg.HistoryLimit)
	}
	if cfg.MaxValueBytes != 2000 {
		t.Errorf("env over file: max_value_bytes = %d, want 2000", cfg.MaxValueBytes)
	}
	if cfg.LogLevel != "debug" {
		t.Errorf("flag over env: log_level = %q, want debug", cfg.LogLevel)
	}
	if got := strings.Join(cfg.Etcd.Endpoints, ","); got != "http://b:2379,http://c:2379" {
		t.Errorf("etcd endpoints = %q", got)
	}
	if cfg.Listen != "127.0.0.1:7420" || cfg.ShutdownTimeout != 10*time.Second {
		t.Errorf("defaults lost: %+v", cfg)
	}
}

func TestConfigRejectsUnknownKeysAndBadEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "graftd.yaml")
	os.WriteFile(file, []byte("histroy_limit: 7\n"), 0o600)
	_, err := load(t, file, map[string]string{"GRAFT_HISTORY_LIMIT": "many", "GRAFT_DEV": "yes please"})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"histroy_limit", "GRAFT_HISTORY_LIMIT", "whole number", "GRAFT_DEV", "true or false"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestValidateListsEveryProblem(t *testing.T) {
	cfg := Defaults()
	cfg.Listen = "0.0.0.0:7420"
	cfg.MaxValueBytes = 10 << 20
	cfg.LogFormat = "xml"
	err := cfg.Validate()
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{
		"not loopback and has no TLS",
		"--etcd-endpoints is required",
		"--nats-url is required",
		"--keyring-file is required",
		"--max-value-bytes",
		"--log-format",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestValidate(t *testing.T) {
	external := func(c *Config) {
		c.Etcd.Endpoints = []string{"http://etcd:2379"}
		c.NATS.URL = "nats://nats:4222"
		c.KeyringFile = "/etc/graft/keyring.json"
	}
	tests := []struct {
		name  string
		edit  func(*Config)
		valid bool
		want  string
	}{
		{"dev defaults", func(c *Config) { c.Dev = true }, true, ""},
		{"dev on all interfaces", func(c *Config) { c.Dev = true; c.Listen = "0.0.0.0:7420" }, false, "loopback only"},
		{"dev with external etcd", func(c *Config) { c.Dev = true; c.Etcd.Endpoints = []string{"http://x:2379"} }, false, "drop --etcd-endpoints"},
		{"external on loopback", external, true, ""},
		{"external public without TLS", func(c *Config) { external(c); c.Listen = ":7420" }, false, "--insecure-listen"},
		{"external public insecure on purpose", func(c *Config) { external(c); c.Listen = ":7420"; c.InsecureListen = true }, true, ""},
		{"external public with TLS", func(c *Config) { external(c); c.Listen = ":7420"; c.TLSCertFile = "c"; c.TLSKeyFile = "k" }, true, ""},
		{"half TLS", func(c *Config) { external(c); c.TLSCertFile = "c" }, false, "go together"},
		{"root token without dev", func(c *Config) { external(c); c.DevRootToken = "x" }, false, "needs --dev"},
		{"bad prefix", func(c *Config) { external(c); c.Etcd.Prefix = "graft" }, false, "--etcd-prefix"},
		{"three NATS replicas", func(c *Config) { external(c); c.NATS.Replicas = 3 }, true, ""},
		{"six NATS replicas", func(c *Config) { external(c); c.NATS.Replicas = 6 }, false, "--nats-replicas 6: want 1 to 5"},
		{"dev with NATS replicas", func(c *Config) { c.Dev = true; c.NATS.Replicas = 3 }, false, "one embedded NATS node"},
		{"grpc reflection", func(c *Config) { external(c); c.GRPCReflection = true }, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			tt.edit(&c)
			err := c.Validate()
			if tt.valid != (err == nil) {
				t.Fatalf("Validate() = %v, want valid=%v", err, tt.valid)
			}
			if err != nil && !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}
