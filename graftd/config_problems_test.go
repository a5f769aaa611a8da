package graftd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A configuration file with an unknown key and other mistakes reports all
// of them in one error, not the unknown key alone.
func TestConfigReportsUnknownKeysWithTheOtherProblems(t *testing.T) {
	file := filepath.Join(t.TempDir(), "graftd.yaml")
	text := "dev: true\nlisten: nowhere\nhistroy_limit: 7\naudit_max_age: 1m\nreconcile_interval: 10ms\ntls_cert_file: cert.pem\n"
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := load(t, file, map[string]string{"GRAFT_HISTORY_LIMIT": "many"})
	if err == nil {
		t.Fatal("a bad configuration was accepted")
	}
	for _, want := range []string{
		"field histroy_limit not found", `GRAFT_HISTORY_LIMIT="many"`, `--listen "nowhere": want host:port`,
		"--audit-max-age 1m0s", "--reconcile-interval 10ms", "--tls-cert-file and --tls-key-file go together",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the problems lack %q:\n%v", want, err)
		}
	}
}
