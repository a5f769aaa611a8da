package graftd

import (
	"net"
	"os"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The compose cluster publishes no port that dev mode uses, so someone who
// runs `make run` and then the cluster, as the README goes, gets both.
func TestComposePortsDoNotCollideWithDevMode(t *testing.T) {
	data, err := os.ReadFile("../deploy/docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Ports []string `yaml:"ports"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatal(err)
	}
	dev := map[string]bool{}
	for _, addr := range []string{Defaults().Listen, Defaults().HTTPListen} {
		_, port, _ := net.SplitHostPort(addr)
		dev[port] = true
	}
	published := 0
	for name, svc := range compose.Services {
		for _, p := range svc.Ports {
			parts := strings.Split(p, ":") // [host-ip:]host-port:container-port
			if len(parts) < 2 {
				t.Fatalf("service %s publishes %q without a host port", name, p)
			}
			published++
			if host := parts[len(parts)-2]; dev[host] {
				t.Errorf("service %s publishes host port %s, which graftd --dev uses", name, host)
			}
		}
	}
	if published == 0 {
		t.Fatal("the compose file publishes no port: the test reads it wrongly")
	}
}
