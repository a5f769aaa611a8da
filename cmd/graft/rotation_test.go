package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/graftdtest"
)

const (
	rotAdmin  = "/dba/passpack/admin/postgres"
	rotTarget = "/dba/passpack/services/message-processor/postgres"
	rotName   = "message-processor-pg"
	// rotDSN is what the admin DSN holds; no output may show it.
	rotDSN = "postgres://admin:adm1n-s3cret@db:5432/postgres"
)

func rotCreateArgs(extra ...string) []string {
	return append([]string{"rotation", "create", rotName, "--driver", "postgres", "--admin", rotAdmin, "--target", rotTarget,
		"--users", "message-processor-blue,message-processor-green", "--consumers", "app:message-processor"}, extra...)
}

// mustContain fails unless out holds every one of want.
func mustContain(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, out)
		}
	}
	if strings.Contains(out, "adm1n-s3cret") {
		t.Errorf("%s shows the admin DSN's password:\n%s", what, out)
	}
}

// line returns the line of out that starts with prefix.
func line(t *testing.T, out, prefix string) string {
	t.Helper()
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimRight(l, "\n")
		}
	}
	t.Fatalf("no line %q in:\n%s", prefix, out)
	return ""
}

// Creating a rotation: refused until the admin DSN is stored, refused
// with flags missing or wrong (each named), then stored with its
// defaults and shown by create, ls, status and history before any run.
func TestRotationCreate(t *testing.T) {
	c := newCLI(t, graftdtest.Start(t))

	// Flags missing: each is named, with an example to copy.
	got := c.fails("rotation", "create", rotName, "--driver", "postgres", "--target", rotTarget)
	mustContain(t, "create without --admin, --users, --consumers", got,
		"rotation create message-processor-pg: missing --admin, --users, --consumers; for example: graft rotation create message-processor-pg --driver postgres --admin /dba/passpack/admin/postgres")
	if got := c.fails("rotation", "create"); got != "graft: rotation create: missing NAME (usage: graft rotation create NAME --driver postgres|mysql --admin PATH --target PATH --users A,B --consumers app:X[,app:Y] [flags])\n" {
		t.Errorf("create without a name: %q", got)
	}

	// The DSN is not there yet: the refusal says to put it, and where.
	got = c.fails(rotCreateArgs()...)
	mustContain(t, "create without the admin DSN", got, "the admin DSN "+rotAdmin+"/dsn", "put it first", "graft put "+rotAdmin+"/dsn")

	c.put(rotAdmin+"/dsn", rotDSN)

	// Bad flags are refused by graftd's validation, every problem at once.
	got = c.fails("rotation", "create", rotName, "--driver", "oracle", "--admin", rotAdmin, "--target", rotTarget,
		"--users", "message-processor-blue", "--consumers", "message-processor")
	mustContain(t, "create with one user", got, "users: 1 given: want two users", `driver "oracle"`, `consumer "message-processor": want app:<name>`)
	got = c.fails(rotCreateArgs("--every", "10s")...)
	mustContain(t, "create --every 10s", got, "every 10s: want 0 (only when asked) or at least 1m")
	got = c.fails("rotation", "create", rotName, "--driver", "postgres", "--admin", rotTarget+"/admin", "--target", rotTarget,
		"--users", "a,b", "--group", "g", "--consumers", "app:x")
	mustContain(t, "create with the admin inside the target", got, "overlap")
	if r := c.run("rotation", "ls"); r.code != 0 || r.stdout != "" || r.stderr != "no rotations\n" {
		t.Fatalf("ls after only refused creates: %+v", r)
	}

	out := c.ok(rotCreateArgs("--every", "24h", "--retire-grace", "90s")...)
	mustContain(t, "create", out,
		"rotation:        message-processor-pg\n",
		"driver:          postgres\n",
		"admin:           /dba/passpack/admin/postgres/dsn\n",
		"target:          /dba/passpack/services/message-processor/postgres (keys user, password)\n",
		"users:           message-processor-blue, message-processor-green\n",
		"group:           message-processor\n", // the users' common prefix
		"consumers:       app:message-processor\n",
		"runs:            every 24h\n",
		"timings:         rollout timeout 10m, retire grace 1m30s, step timeout 2m\n",
		"created:         ", " by root\n",
		"graft rotation run message-processor-pg")

	// A second one of the same name, or over the same target, is refused.
	mustContain(t, "create twice", c.fails(rotCreateArgs()...), "rotation message-processor-pg exists")

	// ls: one row, never run, next due a day after creation.
	ls := c.ok("rotation", "ls")
	lines := strings.Split(strings.TrimSpace(ls), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^NAME +DRIVER +TARGET +PHASE +ACTIVE +LAST-SUCCESS +NEXT-DUE +FLAGS$`).MatchString(lines[0]) {
		t.Fatalf("rotation ls:\n%s", ls)
	}
	row := regexp.MustCompile(`^message-processor-pg +postgres +/dba/passpack/services/message-processor/postgres +idle +- +- +(\S+) +-$`).FindStringSubmatch(lines[1])
	if row == nil {
		t.Fatalf("rotation ls row %q", lines[1])
	}
	var views []rotationView
	decode(t, c.ok("rotation", "ls", "-o", "json"), &views)
	if len(views) != 1 {
		t.Fatalf("ls -o json: %d rotations", len(views))
	}
	v := views[0]
	created, err := time.Parse(time.RFC3339Nano, v.Spec.Created)
	if err != nil {
		t.Fatalf("created %q: %v", v.Spec.Created, err)
	}
	if want := created.Add(24 * time.Hour).UTC().Format(time.RFC3339); row[1] != want || v.State.NextDue == "" {
		t.Errorf("next due %s (json %q), want a day after creation, %s", row[1], v.State.NextDue, want)
	}
	if v.Spec.Every != "24h" || v.Spec.RetireGrace != "1m30s" || v.Spec.RolloutTimeout != "10m" || v.Spec.Group != "message-processor" ||
		v.State.Phase != "idle" || v.State.Run != 0 || v.State.Paused || v.State.Stalled || v.State.Overdue || len(v.State.Steps) != 0 || v.State.Acked == nil {
		t.Errorf("ls -o json: %+v", v)
	}
	mustContain(t, "ls -o yaml", c.ok("rotation", "ls", "-o", "yaml"), "name: message-processor-pg\n", "phase: idle\n", "every: 24h\n")

	st := c.ok("rotation", "status", rotName)
	mustContain(t, "status of a rotation never run", st,
		"target:          "+rotTarget,
		"phase:           idle (never run)\n",
		"run:             - (none yet)\n",
		"active user:     -\n",
		"new user:        -\n",
		"steps:           none\n",
		"consumers acked: -\n",
		"last success:    never\n",
		"next due:        "+row[1]+"\n",
		"overdue:         no\n",
		"stalled:         no\n",
		"holder:          - (no rotator holds it)\n",
		"paused:          no\n")
	if strings.Contains(st, "reason:") || strings.Contains(strings.ToLower(st), "password:") {
		t.Errorf("status of a rotation never run shows a reason or a password:\n%s", st)
	}
	if r := c.run("rotation", "history", rotName); r.code != 0 || r.stdout != "" || r.stderr != "rotation message-processor-pg has no finished runs\n" {
		t.Errorf("history of a rotation never run: %+v", r)
	}
	if got := c.ok("rotation", "history", rotName, "-o", "json"); got != "[]\n" {
		t.Errorf("history -o json of a rotation never run = %q", got)
	}
	mustContain(t, "history --limit 0", c.fails("rotation", "history", rotName, "--limit", "0"), "--limit 0: want 1 to 1000")
	mustContain(t, "status of a rotation that does not exist", c.fails("rotation", "status", "nope"), "rotation nope: not found", "graft rotation ls")
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 10 * time.Minute: "10m", 90 * time.Second: "1m30s", 24 * time.Hour: "24h",
		90 * time.Minute: "1h30m", time.Hour + time.Second: "1h0m1s", 250 * time.Millisecond: "250ms", 60 * time.Second: "1m",
	} {
		if got := human(d); got != want {
			t.Errorf("human(%s) = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(human(d)); err != nil || back != d {
			t.Errorf("human(%s) = %q does not parse back: %s, %v", d, human(d), back, err)
		}
	}
}
