package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// The settings file is KEY=VALUE lines taken literally; every problem is
// reported at once, and no error ever quotes a value.
func TestLoadSettings(t *testing.T) {
	const password = `p@ss= w'o"rd\ #1`
	tests := []struct {
		name    string
		file    string
		want    Settings
		wantErr []string
		notErr  []string // what the error must not say
	}{
		{
			name: "every key, literal values",
			file: "# rendered by graft-agent\nDB_HOST=db.internal\nDB_PORT=6432\n\nDB_NAME=petstore\nDB_USER=petstore-blue\nDB_PASSWORD=" + password + "\nDB_SSLMODE=require\nDB_CONN_MAX_LIFETIME=90s\n",
			want: Settings{Driver: "postgres", Host: "db.internal", Port: "6432", Name: "petstore", User: "petstore-blue", Password: password, SSLMode: "require", ConnMaxLifetime: 90 * time.Second},
		},
		{
			name: "defaults, export and CRLF",
			file: "export DB_HOST=127.0.0.1\r\nexport DB_NAME=petstore\r\nDB_USER=u\r\nDB_PASSWORD=" + password + "\r\n",
			want: Settings{Driver: "postgres", Host: "127.0.0.1", Port: "5432", Name: "petstore", User: "u", Password: password, SSLMode: "prefer", ConnMaxLifetime: time.Hour},
		},
		{
			name:    "missing and invalid settings, all at once",
			file:    "DB_PORT=99999\nDB_SSLMODE=sometimes\nDB_PASSWORD=" + password + "\n",
			wantErr: []string{"DB_HOST is not set", "DB_NAME is not set", "DB_USER is not set", "DB_PORT is not a port number", "DB_SSLMODE is not one of"},
		},
		{
			name:    "a connection lifetime that is not one",
			file:    "DB_HOST=h\nDB_NAME=n\nDB_USER=u\nDB_CONN_MAX_LIFETIME=1\n",
			wantErr: []string{"DB_CONN_MAX_LIFETIME is not a duration of at least 100ms"},
		},
		{
			name:    "lines that are not settings",
			file:    "DB_HOST=h\nDB_PASWORD=" + password + "\n" + password + "\nDB_HOST=other\nDB_NAME=n\nDB_USER=u\n",
			wantErr: []string{`line 2: unknown key "DB_PASWORD"`, "line 3 is not KEY=VALUE", "line 4: DB_HOST is set twice"},
		},
		{
			name: "mysql's defaults",
			file: "DB_DRIVER=mysql\nDB_HOST=db.internal\nDB_NAME=petstore\nDB_USER=u\nDB_PASSWORD=" + password + "\n",
			want: Settings{Driver: "mysql", Host: "db.internal", Port: "3306", Name: "petstore", User: "u", Password: password, SSLMode: "prefer", ConnMaxLifetime: time.Hour},
		},
		{
			name: "mysql with every key",
			file: "DB_DRIVER=mysql\nDB_HOST=db.internal\nDB_PORT=3307\nDB_NAME=petstore\nDB_USER=u\nDB_PASSWORD=" + password + "\nDB_SSLMODE=verify-full\n",
			want: Settings{Driver: "mysql", Host: "db.internal", Port: "3307", Name: "petstore", User: "u", Password: password, SSLMode: "verify-full", ConnMaxLifetime: time.Hour},
		},
		{
			name:    "a TLS mode mysql does not take",
			file:    "DB_DRIVER=mysql\nDB_HOST=h\nDB_NAME=n\nDB_USER=u\nDB_PASSWORD=" + password + "\nDB_SSLMODE=verify-ca\n",
			wantErr: []string{"DB_SSLMODE is not one of disable, prefer, preferred, require, verify-full (for DB_DRIVER=mysql)"},
		},
		{
			name:    "an unknown driver",
			file:    "DB_DRIVER=oracle\nDB_HOST=h\nDB_NAME=n\nDB_USER=u\nDB_PASSWORD=" + password + "\nDB_SSLMODE=whatever\n",
			wantErr: []string{"DB_DRIVER is not one of postgres (PostgreSQL), mysql (MariaDB)"},
			// Nothing to check them against: no noise about them.
			notErr: []string{"DB_PORT", "DB_SSLMODE"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "petstore.env")
			if err := os.WriteFile(name, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := source{file: name}.load()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if got != tt.want {
					t.Fatalf("got %+v, want %+v", got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %+v, want an error", got)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			for _, not := range tt.notErr {
				if strings.Contains(err.Error(), not) {
					t.Errorf("error %q says %q", err, not)
				}
			}
			if strings.Contains(err.Error(), "w'o") || strings.Contains(err.Error(), "p@ss") {
				t.Errorf("error %q holds the password", err)
			}
		})
	}
}

// Without --config the settings come from the environment.
func TestLoadSettingsFromEnvironment(t *testing.T) {
	t.Setenv("DB_HOST", "h")
	t.Setenv("DB_NAME", "n")
	t.Setenv("DB_USER", "u")
	t.Setenv("DB_PASSWORD", "pw")
	t.Setenv("DB_SSLMODE", "")
	got, err := source{}.load()
	if want := (Settings{Driver: "postgres", Host: "h", Port: "5432", Name: "n", User: "u", Password: "pw", SSLMode: "prefer", ConnMaxLifetime: time.Hour}); err != nil || got != want {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
}

// A password is set on the pool's configuration, never parsed from (or
// quoted with) a connection string, whatever it holds.
func TestPoolConfigKeepsThePasswordOut(t *testing.T) {
	s := Settings{Host: "127.0.0.1", Port: "5432", Name: "pet's", User: `us\er`, Password: "a' sslmode=disable b", SSLMode: "require"}
	cfg, err := s.poolConfig()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.ConnConfig
	if c.Password != s.Password || c.User != s.User || c.Database != s.Name || c.TLSConfig == nil {
		t.Fatalf("config: user %q database %q password %q TLS %v", c.User, c.Database, c.Password, c.TLSConfig != nil)
	}
	if strings.Contains(s.String(), "sslmode") {
		t.Fatalf("String() = %q holds the password", s)
	}
}

// On mysql the DSN is a mysql.Config, the password set on it, never
// written into a string; DB_SSLMODE maps to the driver's tls parameter,
// which the driver accepts.
func TestMySQLConfig(t *testing.T) {
	for mode, want := range map[string]string{
		"disable": "false", "prefer": "preferred", "preferred": "preferred", "require": "skip-verify", "verify-full": "true",
	} {
		t.Run(mode, func(t *testing.T) {
			s := Settings{Driver: "mysql", Host: "::1", Port: "3306", Name: "pet's", User: `us@er`, Password: "a'@tcp(evil)/x?tls=false", SSLMode: mode}
			cfg := s.mysqlConfig()
			if cfg.TLSConfig != want {
				t.Errorf("DB_SSLMODE=%s: tls=%q, want %q", mode, cfg.TLSConfig, want)
			}
			if cfg.Passwd != s.Password || cfg.User != s.User || cfg.DBName != s.Name || cfg.Net != "tcp" || cfg.Addr != "[::1]:3306" {
				t.Errorf("config: user %q database %q password %q address %s %q", cfg.User, cfg.DBName, cfg.Passwd, cfg.Net, cfg.Addr)
			}
			if !cfg.ParseTime {
				t.Error("created_at would not be read as a time.Time")
			}
			if _, err := mysql.NewConnector(cfg); err != nil {
				t.Errorf("the driver does not take the configuration: %v", err)
			}
		})
	}
}
