package main

import (
	"strconv"
	"strings"
	"testing"

	"github.com/graft-sh/graft/internal/mysqltest"
	"github.com/graft-sh/graft/internal/testenv"
)

// DB_SSLMODE on MariaDB, against a server that takes TCP connections over
// TLS only, with a certificate from a CA of its own: disable is refused,
// prefer, preferred and require connect over TLS, and verify-full refuses
// the certificate, which no CA of the system's signed. (MariaDB 10.11
// refuses a login without TLS there as it does a wrong password, error
// 1045; the same user and password log in with require.)
func TestMySQLSSLModes(t *testing.T) {
	my := mysqltest.Start(t, mysqltest.RequireTLS())
	t.Logf("MariaDB started in %s", my.StartTime)
	my.CreateDatabase(t, "petstore")
	my.CreateUser(t, "clerk", "clerk-pw")
	my.Exec(t, "GRANT ALL PRIVILEGES ON petstore.* TO 'clerk'@'%'")
	tests := []struct {
		mode    string
		wantErr string // "": connects over TLS
	}{
		{"disable", "Access denied for user 'clerk'"},
		{"prefer", ""},
		{"preferred", ""},
		{"require", ""},
		{"verify-full", "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			s := Settings{Driver: driverMySQL, Host: my.Host, Port: strconv.Itoa(my.Port), Name: "petstore", User: "clerk", Password: "clerk-pw", SSLMode: tt.mode}
			p, err := connect(t.Context(), s, testenv.Logger(t))
			if tt.wantErr != "" {
				if err == nil {
					p.close()
					t.Fatalf("connected, want an error saying %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "connect as user clerk on ") || strings.Contains(err.Error(), "clerk-pw") {
					t.Fatalf("error %q, want one that says %q, without the password", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			if p.user != "clerk" {
				t.Errorf("connected as %q, want clerk", p.user)
			}
			var name, cipher string
			if err := p.store.(*mysqlStore).db.QueryRowContext(t.Context(), "SHOW SESSION STATUS LIKE 'Ssl_cipher'").Scan(&name, &cipher); err != nil {
				t.Fatal(err)
			}
			if cipher == "" {
				t.Errorf("the connection does not use TLS")
			}
		})
	}
}
