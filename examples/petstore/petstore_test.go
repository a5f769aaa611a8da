package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/testenv"
)

// The API, against a table petstore did not make: a DBA created pets and
// granted the user only reading and inserting, not the privilege to
// create tables, which CREATE TABLE IF NOT EXISTS would need. Settings
// come from the environment; SIGTERM stops petstore cleanly.
func TestAPI(t *testing.T) {
	forEachDB(t, func(t *testing.T, db testDB) {
		db.createShop(t)
		p := startPetstore(t, db.settings("clerk", "clerk-pw", "shop"))
		testAPI(t, p)
	})
}

func testAPI(t *testing.T, p *process) {
	p.waitLog("connected to database as user clerk", 1)
	if strings.Contains(p.log.String(), "clerk-pw") {
		t.Fatalf("the log holds the password:\n%s", p.log)
	}

	tests := []struct {
		name, method, path, body string
		wantStatus               int
		want                     string // in the body
	}{
		{"add", "POST", "/pet", `{"name": "Rex"}`, 201, `"name":"Rex"`},
		{"add trims", "POST", "/pet", `{"name": "  Tom  "}`, 201, `"name":"Tom"`},
		{"list, newest first", "GET", "/pets", "", 200, `"name":"Tom"`},
		{"list with a limit", "GET", "/pets?limit=1", "", 200, `[{"id":2,"name":"Tom"`},
		{"limit out of range", "GET", "/pets?limit=0", "", 400, `"error":"limit must be a whole number from 1 to 1000"`},
		{"no name", "POST", "/pet", `{"name": "  "}`, 400, `"error":"name is required"`},
		{"name too long", "POST", "/pet", `{"name": "` + strings.Repeat("é", 101) + `"}`, 400, "longer than 100 characters"},
		{"unknown field", "POST", "/pet", `{"nam": "Rex"}`, 400, `unknown field \"nam\"`},
		{"not JSON", "POST", "/pet", `Rex`, 400, `the body must be a JSON object`},
		{"name not a string", "POST", "/pet", `{"name": 7}`, 400, `the body must be a JSON object`},
		{"two objects", "POST", "/pet", `{"name": "a"} {"name": "b"}`, 400, "nothing after it"},
		{"empty body", "POST", "/pet", ``, 400, "EOF"},
		{"wrong method", "GET", "/pet", "", 405, ""},
		{"unknown path", "GET", "/cats", "", 404, ""},
		{"health", "GET", "/healthz", "", 200, `{"status":"ok","user":"clerk"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := p.call(tt.method, tt.path, tt.body)
			if status != tt.wantStatus || !strings.Contains(body, tt.want) {
				t.Fatalf("%s %s = %d %s, want %d with %s", tt.method, tt.path, status, body, tt.wantStatus, tt.want)
			}
		})
	}
	_, body := p.call("GET", "/pets", "")
	pets := decode[[]Pet](t, body)
	if len(pets) != 2 || pets[0].Name != "Tom" || pets[1].Name != "Rex" || pets[1].CreatedAt.IsZero() {
		t.Fatalf("pets = %+v, want Tom then Rex", pets)
	}
	if age := time.Since(pets[1].CreatedAt); age < 0 || age > time.Minute {
		t.Fatalf("Rex was created %s ago (at %s), want just now", age, pets[1].CreatedAt)
	}

	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("petstore did not stop on SIGINT")
	}
	if !p.cmd.ProcessState.Success() {
		t.Fatalf("petstore exited with %s", p.cmd.ProcessState)
	}
	if _, err := os.Stat(p.pidfile); !os.IsNotExist(err) {
		t.Fatalf("the pidfile is still there: %v", err)
	}
}

// On SIGHUP with new credentials petstore opens a pool as the new user,
// puts it in place and closes the old one, and no request fails during
// the swap. Once it is done the old user can be locked out and its
// sessions ended without any effect: petstore holds none of them.
func TestSIGHUPSwapsUsersWithoutFailingARequest(t *testing.T) {
	forEachDB(t, func(t *testing.T, db testDB) {
		conf := filepath.Join(t.TempDir(), "petstore.env")
		settingsFile(t, conf, db, "petstore_blue", passwords["petstore_blue"])
		p := startPetstore(t, nil, "--config", conf, "--schema-owner", group)
		p.waitLog("connected to database as user petstore_blue", 1)

		if status, body := p.call("POST", "/pet", `{"name": "Rex"}`); status != http.StatusCreated {
			t.Fatalf("POST /pet = %d %s", status, body)
		}
		if _, body := p.call("GET", "/pets", ""); !strings.Contains(body, `"name":"Rex"`) {
			t.Fatalf("GET /pets = %s, want Rex", body)
		}
		db.checkSchemaOwner(t, p)

		poll := startPoller(t, p.url)
		poll.waitOK(t, 100)

		// The swap with requests in flight on both sides of it. With the
		// pets table locked, the poller's requests wait on blue's
		// connections, and those of a second poller wait for one (where
		// the pool has no more than their 4 connections: on up to 4
		// CPUs), while the reload opens green's pool and swaps it in.
		// Closing blue's pool fails the waits for its connections: those
		// requests must run again on green's. The requests of a third
		// poller, sent after the swap, must go to green's pool (and wait
		// there too), not to blue's; and blue's pool must not close
		// before its requests are done.
		unlock := db.lockPets(t)
		queued := startPoller(t, p.url)
		testenv.WaitFor(t, 10*time.Second, func() bool { return db.waiting(t, "petstore_blue") >= pollWorkers })
		settingsFile(t, conf, db, "petstore_green", passwords["petstore_green"])
		p.hup()
		if !p.logSays("connected to database as user petstore_green", 1, 5*time.Second) {
			t.Error("the reload did not put green's pool in place while blue's requests were in flight")
		}
		after := startPoller(t, p.url)
		testenv.WaitFor(t, 10*time.Second, func() bool { return after.failed.Load() > 0 || db.waiting(t, "petstore_green") > 0 })
		if strings.Contains(p.log.String(), "closed the previous connection pool") {
			t.Error("blue's pool was closed while requests on it were in flight")
		}
		unlock()
		p.waitLog("closed the previous connection pool", 1)
		queued.waitOK(t, 50)
		queued.check(t)
		after.waitOK(t, 50)
		after.check(t)
		poll.waitOK(t, 100)

		// Retire blue as a rotation would: no login, sessions ended.
		if ended := db.lockOut(t, "petstore_blue"); ended != 0 {
			t.Errorf("%d sessions of petstore_blue were still open after the swap", ended)
		}
		poll.waitOK(t, 100)
		poll.check(t)

		if greens := db.sessions(t, "petstore_green"); greens == 0 {
			t.Fatalf("no sessions of petstore_green, want some")
		}
		if status, body := p.call("GET", "/healthz", ""); status != 200 || !strings.Contains(body, `"user":"petstore_green"`) {
			t.Fatalf("GET /healthz = %d %s", status, body)
		}
		// A SIGHUP that changes nothing keeps the pool.
		p.hup()
		p.waitLog("reload: database settings unchanged", 1)
		if n := strings.Count(p.log.String(), "connected to database as user"); n != 2 {
			t.Fatalf("%d connections logged, want 2 (blue, then green)", n)
		}
	})
}

// Settings the database refuses, a file petstore cannot read, or a move to
// another kind of database leave it serving on the pool it has: it logs
// why (never the password) and its health check says the file's settings
// are not in use, so graft-agent does not count the reload as healthy.
// Good settings then swap as usual.
func TestBadSettingsKeepTheCurrentPool(t *testing.T) {
	forEachDB(t, func(t *testing.T, db testDB) {
		conf := filepath.Join(t.TempDir(), "petstore.env")
		settingsFile(t, conf, db, "petstore_blue", passwords["petstore_blue"])
		p := startPetstore(t, nil, "--config", conf, "--schema-owner", group)
		p.waitLog("connected to database as user petstore_blue", 1)
		poll := startPoller(t, p.url)
		poll.waitOK(t, 50)

		const wrong = "not-the-password-0451"
		settingsFile(t, conf, db, "petstore_green", wrong)
		p.hup()
		p.waitLog("the new database settings do not work; keeping the current connection as user petstore_blue", 1)
		poll.waitOK(t, 50)
		status, body := p.call("GET", "/healthz", "")
		if status != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"stale","user":"petstore_blue"`) {
			t.Fatalf("GET /healthz with refused settings = %d %s, want 503, stale", status, body)
		}

		if err := os.WriteFile(conf, []byte("DB_HOST=127.0.0.1\n"+wrong+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p.hup()
		p.waitLog("reload: cannot read the database settings; keeping the current connection", 1)
		poll.waitOK(t, 50)
		if status, body := p.call("GET", "/healthz", ""); status != http.StatusServiceUnavailable || !strings.Contains(body, "line 2 is not KEY=VALUE") {
			t.Fatalf("GET /healthz with an unreadable file = %d %s, want 503 naming the line", status, body)
		}

		// The same server and users, named as the other kind of database.
		other := map[string]string{driverPostgres: driverMySQL, driverMySQL: driverPostgres}[db.driver()]
		lines := []string{"DB_DRIVER=" + other}
		for _, l := range db.settings("petstore_green", passwords["petstore_green"], "petstore") {
			if !strings.HasPrefix(l, "DB_DRIVER=") {
				lines = append(lines, l)
			}
		}
		writeSettings(t, conf, lines)
		p.hup()
		p.waitLog("reload: DB_DRIVER changed from "+db.driver()+" to "+other+", which needs a restart; keeping the current connection as user petstore_blue", 1)
		poll.waitOK(t, 50)
		if status, body := p.call("GET", "/healthz", ""); status != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"stale","user":"petstore_blue"`) {
			t.Fatalf("GET /healthz with another DB_DRIVER = %d %s, want 503, stale", status, body)
		}

		settingsFile(t, conf, db, "petstore_green", passwords["petstore_green"])
		p.hup()
		p.waitLog("connected to database as user petstore_green", 1)
		poll.waitOK(t, 50)
		poll.check(t)
		if status, body := p.call("GET", "/healthz", ""); status != http.StatusOK {
			t.Fatalf("GET /healthz = %d %s", status, body)
		}
		log := p.log.String()
		for _, secret := range []string{wrong, passwords["petstore_blue"], passwords["petstore_green"]} {
			if strings.Contains(log, secret) {
				t.Errorf("the log holds a password (%q):\n%s", secret, log)
			}
		}
		if n := strings.Count(log, "level=ERROR"); n != 3 {
			t.Errorf("%d errors logged, want 3 (the refused settings, the unreadable file, the other driver):\n%s", n, log)
		}
	})
}

// A petstore that cannot connect at start exits non-zero and says why,
// without the password.
func TestStartFailsOnRefusedSettings(t *testing.T) {
	forEachDB(t, func(t *testing.T, db testDB) {
		conf := filepath.Join(t.TempDir(), "petstore.env")
		settingsFile(t, conf, db, "petstore_blue", "wrong-secret-7")
		cmd := petstoreCommand(t, nil, "--config", conf, "--listen", "127.0.0.1:0")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("petstore started with a wrong password:\n%s", out)
		}
		if !strings.Contains(string(out), "petstore: connect as user petstore_blue on "+db.addr()) ||
			!strings.Contains(string(out), db.refused("petstore_blue")) || strings.Contains(string(out), "wrong-secret-7") {
			t.Fatalf("petstore's output does not say why without the password:\n%s", out)
		}
	})
}
