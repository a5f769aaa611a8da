package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Settings are how petstore connects to its database. Settings are
// comparable: a reload opens a new pool only when they changed.
type Settings struct {
	// Driver is DB_DRIVER: driverPostgres or driverMySQL, never empty.
	Driver                                    string
	Host, Port, Name, User, Password, SSLMode string
	// ConnMaxLifetime is DB_CONN_MAX_LIFETIME: how long a pooled
	// connection lives (default an hour). Behind graft-agent's broker, a
	// short one moves every connection to a new credential soon after it
	// is published, so the old user is left with no session.
	ConnMaxLifetime time.Duration
}

// keys are the settings' names, in the file and in the environment.
var keys = []string{"DB_DRIVER", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SSLMODE", "DB_CONN_MAX_LIFETIME"}

// defaultConnMaxLifetime is a pooled connection's life without
// DB_CONN_MAX_LIFETIME, as pgxpool's default.
const defaultConnMaxLifetime = time.Hour

var keyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// The values of DB_DRIVER.
const (
	driverPostgres = "postgres"
	driverMySQL    = "mysql" // MariaDB
)

// A driver's defaults and the DB_SSLMODE values it takes.
type driverInfo struct {
	port     string
	sslModes []string
}

var drivers = map[string]driverInfo{
	driverPostgres: {port: "5432", sslModes: []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}},
	// prefer is libpq's spelling and preferred go-sql-driver's; both mean
	// TLS when the server offers it, unverified.
	driverMySQL: {port: "3306", sslModes: []string{"disable", "prefer", "preferred", "require", "verify-full"}},
}

// mysqlTLS maps DB_SSLMODE to go-sql-driver/mysql's tls parameter.
var mysqlTLS = map[string]string{
	"disable":     "false",
	"prefer":      "preferred",
	"preferred":   "preferred",
	"require":     "skip-verify",
	"verify-full": "true",
}

// source is where the settings come from: the file given with --config,
// or else the process's environment.
type source struct{ file string }

// load reads the settings again. Its errors never hold a value: the file
// may hold a password on any line.
func (s source) load() (Settings, error) {
	if s.file == "" {
		set, err := parseSettings(os.LookupEnv)
		if err != nil {
			return Settings{}, fmt.Errorf("settings in the environment: %w", err)
		}
		return set, nil
	}
	data, err := os.ReadFile(s.file)
	if err != nil {
		return Settings{}, fmt.Errorf("read settings: %w", err)
	}
	values, err := parseEnvFile(string(data))
	if err != nil {
		return Settings{}, fmt.Errorf("read settings from %s: %w", s.file, err)
	}
	set, err := parseSettings(func(k string) (string, bool) { v, ok := values[k]; return v, ok })
	if err != nil {
		return Settings{}, fmt.Errorf("settings in %s: %w", s.file, err)
	}
	return set, nil
}

// parseEnvFile reads KEY=VALUE lines, as graft-agent renders them. The
// value is the rest of the line exactly, without quoting or escapes, so a
// template needs no escaping for any password without a newline. Blank
// lines, lines starting with # and a leading "export " are allowed, so the
// same file can be sourced by a shell; unknown keys are refused, since a
// misspelt key would otherwise be silently ignored.
func parseEnvFile(data string) (map[string]string, error) {
	values := map[string]string{}
	var errs []error
	for n, line := range strings.Split(data, "\n") {
		line = strings.TrimSuffix(line, "\r")
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(key), "export "))
		switch {
		case !ok || !keyRE.MatchString(key):
			// Not quoted: a broken line may be part of a password.
			errs = append(errs, fmt.Errorf("line %d is not KEY=VALUE", n+1))
		case !slices.Contains(keys, key):
			errs = append(errs, fmt.Errorf("line %d: unknown key %q (known: %s)", n+1, key, strings.Join(keys, ", ")))
		case hasKey(values, key):
			errs = append(errs, fmt.Errorf("line %d: %s is set twice", n+1, key))
		default:
			values[key] = value
		}
	}
	return values, errors.Join(errs...)
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// parseSettings takes the settings from lookup, with defaults for the
// driver (postgres), the port (5432 for postgres, 3306 for mysql) and the
// TLS mode (prefer, as libpq), and reports every problem at once.
func parseSettings(lookup func(string) (string, bool)) (Settings, error) {
	get := func(key, def string) string {
		if v, ok := lookup(key); ok && v != "" {
			return v
		}
		return def
	}
	var errs []error
	driver := get("DB_DRIVER", driverPostgres)
	info, knownDriver := drivers[driver]
	if !knownDriver {
		errs = append(errs, fmt.Errorf("DB_DRIVER is not one of %s (PostgreSQL), %s (MariaDB)", driverPostgres, driverMySQL))
	}
	s := Settings{
		Driver: driver,
		Host:   get("DB_HOST", ""), Port: get("DB_PORT", info.port), Name: get("DB_NAME", ""),
		User: get("DB_USER", ""), Password: get("DB_PASSWORD", ""), SSLMode: get("DB_SSLMODE", "prefer"),
	}
	for _, required := range []struct{ key, value string }{{"DB_HOST", s.Host}, {"DB_NAME", s.Name}, {"DB_USER", s.User}} {
		if required.value == "" {
			errs = append(errs, fmt.Errorf("%s is not set", required.key))
		}
	}
	// With an unknown driver there is no default port, nor a list of TLS
	// modes to check against: the driver's error says enough.
	if p, err := strconv.Atoi(s.Port); (knownDriver || s.Port != "") && (err != nil || p < 1 || p > 65535) {
		errs = append(errs, errors.New("DB_PORT is not a port number (1-65535)"))
	}
	s.ConnMaxLifetime = defaultConnMaxLifetime
	if v := get("DB_CONN_MAX_LIFETIME", ""); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 100*time.Millisecond {
			errs = append(errs, errors.New("DB_CONN_MAX_LIFETIME is not a duration of at least 100ms (such as 30s or 5m)"))
		} else {
			s.ConnMaxLifetime = d
		}
	}
	if knownDriver && !slices.Contains(info.sslModes, s.SSLMode) {
		errs = append(errs, fmt.Errorf("DB_SSLMODE is not one of %s (for DB_DRIVER=%s)", strings.Join(info.sslModes, ", "), s.Driver))
	}
	return s, errors.Join(errs...)
}

// String names the settings for logs and errors, without the password.
func (s Settings) String() string {
	return fmt.Sprintf("user %s on %s:%s, database %s", s.User, s.Host, s.Port, s.Name)
}

// poolConfig is the pgxpool configuration for s.
func (s Settings) poolConfig() (*pgxpool.Config, error) {
	quote := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace
	cfg, err := pgxpool.ParseConfig(fmt.Sprintf("host='%s' port=%s dbname='%s' user='%s' sslmode=%s",
		quote(s.Host), s.Port, quote(s.Name), quote(s.User), s.SSLMode))
	if err != nil {
		return nil, fmt.Errorf("database settings (%s): %w", s, err)
	}
	// Set after parsing rather than written into the connection string, so
	// that no parse error can quote it.
	cfg.ConnConfig.Password = s.Password
	cfg.ConnConfig.RuntimeParams["application_name"] = "petstore"
	cfg.MaxConnLifetime = s.ConnMaxLifetime
	// An idle connection past its life goes at the next health check.
	cfg.HealthCheckPeriod = min(time.Minute, max(s.ConnMaxLifetime/2, 50*time.Millisecond))
	return cfg, nil
}

// mysqlConfig is the go-sql-driver/mysql configuration for s: the DSN as
// a structure, so that no value is ever quoted into a string, nor the
// password parsed from one.
func (s Settings) mysqlConfig() *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.Net, cfg.Addr = "tcp", net.JoinHostPort(s.Host, s.Port)
	cfg.User, cfg.Passwd, cfg.DBName = s.User, s.Password, s.Name
	cfg.TLSConfig = mysqlTLS[s.SSLMode]
	cfg.Timeout = connectTimeout
	// created_at as a time.Time: the session's time zone is UTC, so the
	// TIMESTAMP's value is read as the instant it is.
	cfg.ParseTime, cfg.Loc = true, time.UTC
	cfg.Params = map[string]string{"time_zone": "'+00:00'"}
	cfg.ConnectionAttributes = "program_name:petstore"
	return cfg
}
