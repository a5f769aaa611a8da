package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/sdk"
)

// rotationPoll is how often rotation run --wait asks where the run stands.
const rotationPoll = 250 * time.Millisecond

// rotationExample is the one example every rotation message refers to.
const rotationExample = `graft rotation create message-processor-pg --driver postgres \
      --admin /dba/passpack/admin/postgres \
      --target /dba/passpack/services/message-processor/postgres \
      --users message-processor-blue,message-processor-green \
      --consumers app:message-processor`

type rotationSpecView struct {
	Name             string   `json:"name"`
	Driver           string   `json:"driver"`
	Admin            string   `json:"admin"`
	Target           string   `json:"target"`
	Users            []string `json:"users"`
	Group            string   `json:"group"`
	Consumers        []string `json:"consumers"`
	RolloutTimeout   string   `json:"rollout_timeout"`
	RetireGrace      string   `json:"retire_grace"`
	Every            string   `json:"every,omitempty"`
	StepTimeout      string   `json:"step_timeout"`
	PasswordLength   int      `json:"password_length,omitempty"`
	PasswordAlphabet string   `json:"password_alphabet,omitempty"`
	Creator          string   `json:"creator"`
	Created          string   `json:"created"`
}

type stepView struct {
	Name     string `json:"name"`
	Started  string `json:"started"`
	Finished string `json:"finished,omitempty"`
	Detail   string `json:"detail,omitempty"`
}

type rotationStateView struct {
	Phase             string     `json:"phase"`
	Run               int64      `json:"run"`
	ActiveUser        string     `json:"active_user,omitempty"`
	NewUser           string     `json:"new_user,omitempty"`
	Steps             []stepView `json:"steps"`
	PublishedRevision int64      `json:"published_revision,omitempty"`
	RollbackRevision  int64      `json:"rollback_revision,omitempty"`
	RetireAt          string     `json:"retire_at,omitempty"`
	Acked             []string   `json:"acked"`
	Reason            string     `json:"reason,omitempty"`
	Requested         string     `json:"requested,omitempty"`
	RequestedBy       string     `json:"requested_by,omitempty"`
	RunStarted        string     `json:"run_started,omitempty"`
	RunFinished       string     `json:"run_finished,omitempty"`
	LastSuccess       string     `json:"last_success,omitempty"`
	NextDue           string     `json:"next_due,omitempty"`
	Overdue           bool       `json:"overdue"`
	Stalled           bool       `json:"stalled"`
	Paused            bool       `json:"paused"`
	Holder            string     `json:"holder,omitempty"`
	// Rotator is the rotator that last advanced the state.
	Rotator string `json:"rotator,omitempty"`
}

type rotationView struct {
	Spec  rotationSpecView  `json:"spec"`
	State rotationStateView `json:"state"`
}

type runView struct {
	Run         int64      `json:"run"`
	Outcome     string     `json:"outcome"`
	Reason      string     `json:"reason,omitempty"`
	NewUser     string     `json:"new_user"`
	ActiveUser  string     `json:"active_user"`
	Started     string     `json:"started"`
	Finished    string     `json:"finished"`
	Took        string     `json:"took,omitempty"`
	RequestedBy string     `json:"requested_by,omitempty"`
	Holder      string     `json:"holder,omitempty"`
	Steps       []stepView `json:"steps"`
}

func viewSteps(steps []rotation.Step) []stepView {
	out := make([]stepView, 0, len(steps))
	for _, s := range steps {
		out = append(out, stepView{Name: s.Name, Started: jsonTime(s.Started), Finished: jsonTime(s.Finished), Detail: s.Detail})
	}
	return out
}

func viewRotation(r sdk.Rotation) rotationView {
	s, st := r.Spec, r.State
	v := rotationView{
		Spec: rotationSpecView{
			Name: s.Name, Driver: s.Driver, Admin: s.Admin, Target: s.Target,
			Users: nonNil(s.Users), Group: s.Group, Consumers: nonNil(s.Consumers),
			RolloutTimeout: human(s.RolloutTimeout), RetireGrace: human(s.RetireGrace), StepTimeout: human(s.StepTimeout),
			PasswordLength: s.PasswordLength, PasswordAlphabet: s.PasswordAlphabet,
			Creator: s.Creator, Created: jsonTime(s.Created),
		},
		State: rotationStateView{
			Phase: string(st.Phase), Run: st.Run, ActiveUser: st.ActiveUser, NewUser: st.NewUser,
			Steps: viewSteps(st.Steps), PublishedRevision: st.PublishedRevision, RollbackRevision: st.RollbackRevision,
			RetireAt: jsonTime(st.RetireAt), Acked: nonNil(st.Acked), Reason: st.Reason,
			Requested: jsonTime(st.Requested), RequestedBy: st.RequestedBy,
			RunStarted: jsonTime(st.RunStarted), RunFinished: jsonTime(st.RunFinished), LastSuccess: jsonTime(st.LastSuccess),
			NextDue: jsonTime(st.NextDue), Overdue: st.Overdue, Stalled: st.Stalled, Paused: st.Paused, Holder: st.Holder, Rotator: st.Rotator,
		},
	}
	if s.Every > 0 {
		v.Spec.Every = human(s.Every)
	}
	return v
}

func viewRun(r rotation.Run) runView {
	return runView{
		Run: r.Run, Outcome: string(r.Outcome), Reason: r.Reason, NewUser: r.NewUser, ActiveUser: r.ActiveUser,
		Started: jsonTime(r.Started), Finished: jsonTime(r.Finished), Took: took(r.Started, r.Finished),
		RequestedBy: r.RequestedBy, Holder: r.Holder, Steps: viewSteps(r.Steps),
	}
}

// human is a duration as a person writes it, and as the flags take it
// back: 10m, 1m30s, 24h, 1h30m, 250ms (not 10m0s or 24h0m0s).
func human(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// took is how long from start to end, rounded for a person: to the
// millisecond under a second, to the second after. "" when either is
// unknown.
func took(start, end time.Time) string {
	if start.IsZero() || end.IsZero() || end.Before(start) {
		return ""
	}
	d := end.Sub(start)
	if d < time.Second {
		return human(d.Round(time.Millisecond))
	}
	return human(d.Round(time.Second))
}

// flagsText is the paused, overdue and stalled flags of a state, for a
// table cell.
func flagsText(st rotation.View) string {
	var f []string
	if st.Paused {
		f = append(f, "paused")
	}
	if st.Overdue {
		f = append(f, "overdue")
	}
	if st.Stalled {
		f = append(f, "stalled")
	}
	return dash(strings.Join(f, ","))
}

func (a *app) rotationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rotation",
		Aliases: []string{"rotations"},
		Short:   "Rotate database credentials blue/green: two users that alternate",
		Long: `A rotation keeps a database credential at a target path (TARGET/user and
TARGET/password) and moves it, run by run, between two database users: the
user consumers do not run gets a new random password, is tested, published,
rolled out to every consumer agent, and only then is the other user retired.
A failed test, an unhealthy consumer or a rollout timeout rolls back to the
old credential. graftd stores the rotation; a graft-agent with rotations: in
its configuration (a rotator) runs it. No command here ever shows a
password.`,
		Args: args(0, 0, "a subcommand"),
	}
	cmd.AddCommand(
		a.rotationCreateCmd(),
		a.rotationRunCmd(),
		a.rotationStatusCmd(),
		a.rotationListCmd(),
		a.rotationHistoryCmd(),
		a.rotationPauseCmd(true),
		a.rotationPauseCmd(false),
		a.rotationRmCmd(),
	)
	return cmd
}

// cleanList drops blanks from a comma-separated flag's items.
func cleanList(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (a *app) rotationCreateCmd() *cobra.Command {
	var spec rotation.Spec
	cmd := &cobra.Command{
		Use:   "create NAME --driver postgres|mysql --admin PATH --target PATH --users A,B --consumers app:X[,app:Y]",
		Short: "Create a rotation: what to rotate, where to publish it, who uses it",
		Long: `Create the rotation NAME. The admin connection string must already be stored
at ADMIN/dsn: graft put ADMIN/dsn 'postgres://admin:...@db:5432/postgres'
for postgres, or 'admin:...@tcp(db:3306)/?tls=true' (go-sql-driver/mysql's
form) for mysql, which is MariaDB or MySQL. The DSN asks for TLS to the
database (sslmode=verify-full, tls=true) as any client's would. It stays
in the owner's tree and is never published. Each run publishes user and
password below TARGET, in one write; share TARGET to the consumers' trees
as with any other value.

The two --users alternate, and are created the first time if absent; they
act as --group, a role without login that holds the grants (default: the
users' common prefix, message-processor for message-processor-blue and
message-processor-green). The old user is retired only once every agent of
every --consumers application reports the new revision healthy.

Without --every the rotation runs only when asked (graft rotation run).
Needs the rotate action on TARGET and read on ADMIN/dsn.`,
		Example: "  " + rotationExample + "\n  graft rotation create billing-mysql --driver mysql --admin /dba/billing/admin --target /dba/billing/db \\\n      --users billing_a,billing_b --group billing --consumers app:billing,app:invoicer --every 24h",
		Args:    args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec.Name = args[0]
			spec.Users, spec.Consumers = cleanList(spec.Users), cleanList(spec.Consumers)
			var missing []string
			for _, f := range []struct {
				flag  string
				unset bool
			}{
				{"--driver", spec.Driver == ""},
				{"--admin", spec.Admin == ""},
				{"--target", spec.Target == ""},
				{"--users", len(spec.Users) == 0},
				{"--consumers", len(spec.Consumers) == 0},
			} {
				if f.unset {
					missing = append(missing, f.flag)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("rotation create %s: missing %s; for example: %s", spec.Name, strings.Join(missing, ", "),
					strings.Join(strings.Fields(strings.ReplaceAll(rotationExample, "\\\n", "")), " "))
			}
			spec.Admin, spec.Target = trimPrefix(spec.Admin), trimPrefix(spec.Target)
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, err := c.CreateRotation(ctx, spec)
				if err != nil {
					return err
				}
				return a.Emit(viewRotation(r), func(w io.Writer) error {
					var b strings.Builder
					writeSpec(&b, r.Spec)
					fmt.Fprintf(&b, "created; run it with `graft rotation run %s`, or let --every do it, once a graft-agent with rotations: in its configuration runs\n", r.Spec.Name)
					_, err := io.WriteString(w, b.String())
					return err
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Driver, "driver", "", "the database: postgres, or mysql (MariaDB 10.4 and later)")
	f.StringVar(&spec.Admin, "admin", "", "the path whose key dsn holds the admin connection (ADMIN/dsn)")
	f.StringVar(&spec.Target, "target", "", "the path below which each run publishes user and password")
	f.StringSliceVar(&spec.Users, "users", nil, "the two database users that alternate, comma separated")
	f.StringVar(&spec.Group, "group", "", "the role both users act as, holding the grants (default: the users' common prefix)")
	f.StringSliceVar(&spec.Consumers, "consumers", nil, "the applications using the credential, as app:NAME, comma separated or repeated")
	f.DurationVar(&spec.RolloutTimeout, "rollout-timeout", rotation.DefaultRolloutTimeout, "how long the consumers have to run the new credential, healthy, before the run rolls back")
	f.DurationVar(&spec.RetireGrace, "retire-grace", rotation.DefaultRetireGrace, "how long the old user keeps working after the rollout")
	f.DurationVar(&spec.Every, "every", 0, "run every this long (at least 1m; default: only when asked)")
	f.DurationVar(&spec.StepTimeout, "step-timeout", rotation.DefaultStepTimeout, "how long any other step may take")
	f.IntVar(&spec.PasswordLength, "password-length", 0, "length of new passwords (default 32)")
	f.StringVar(&spec.PasswordAlphabet, "password-alphabet", "", "the characters of new passwords (default A-Z a-z 0-9)")
	return cmd
}

// writeSpec writes what a rotation rotates, and how, as create and status
// show it.
func writeSpec(b *strings.Builder, s rotation.Spec) {
	fmt.Fprintf(b, "rotation:        %s\ndriver:          %s\nadmin:           %s/%s\ntarget:          %s (keys %s, %s)\n",
		s.Name, s.Driver, s.Admin, rotation.KeyDSN, s.Target, rotation.KeyUser, rotation.KeyPassword)
	fmt.Fprintf(b, "users:           %s\ngroup:           %s\nconsumers:       %s\n", strings.Join(s.Users, ", "), s.Group, strings.Join(s.Consumers, ", "))
	every := "only when asked"
	if s.Every > 0 {
		every = "every " + human(s.Every)
	}
	fmt.Fprintf(b, "runs:            %s\ntimings:         rollout timeout %s, retire grace %s, step timeout %s\n",
		every, human(s.RolloutTimeout), human(s.RetireGrace), human(s.StepTimeout))
	if s.PasswordLength > 0 || s.PasswordAlphabet != "" {
		length, alphabet := "32", "A-Z a-z 0-9"
		if s.PasswordLength > 0 {
			length = fmt.Sprint(s.PasswordLength)
		}
		if s.PasswordAlphabet != "" {
			alphabet = fmt.Sprintf("%q", s.PasswordAlphabet)
		}
		fmt.Fprintf(b, "passwords:       %s characters of %s\n", length, alphabet)
	}
	fmt.Fprintf(b, "created:         %s by %s\n", tableTime(s.Created), s.Creator)
}

// writeState writes where a rotation's runs stand, as status shows it.
func writeState(b *strings.Builder, st rotation.View) {
	phase := string(st.Phase)
	switch st.Phase {
	case rotation.PhaseIdle:
		phase += " (never run)"
	case rotation.PhaseRequested:
		phase += fmt.Sprintf(" (run %d asked for by %s at %s)", st.Run+1, dash(st.RequestedBy), tableTime(st.Requested))
	}
	run := "- (none yet)"
	if st.Run > 0 {
		run = fmt.Sprint(st.Run)
	}
	fmt.Fprintf(b, "phase:           %s\nrun:             %s\n", phase, run)
	fmt.Fprintf(b, "active user:     %s\nnew user:        %s\n", dash(st.ActiveUser), dash(st.NewUser))
	if !st.RunStarted.IsZero() {
		fmt.Fprintf(b, "run started:     %s\n", tableTime(st.RunStarted))
	}
	if !st.RunFinished.IsZero() && !st.Phase.InProgress() {
		fmt.Fprintf(b, "run finished:    %s (took %s)\n", tableTime(st.RunFinished), dash(took(st.RunStarted, st.RunFinished)))
	}
	if st.PublishedRevision != 0 {
		fmt.Fprintf(b, "published:       revision %d\n", st.PublishedRevision)
	}
	if st.RollbackRevision != 0 {
		fmt.Fprintf(b, "rolled back:     revision %d\n", st.RollbackRevision)
	}
	if !st.RetireAt.IsZero() {
		fmt.Fprintf(b, "retire at:       %s\n", tableTime(st.RetireAt))
	}
	if len(st.Steps) == 0 {
		fmt.Fprintf(b, "steps:           none\n")
	} else {
		fmt.Fprintf(b, "steps of run %d:\n", st.Run)
		tab := newTable(b, "  STEP", "STARTED", "FINISHED", "TOOK", "DETAIL")
		for _, s := range st.Steps {
			finished, d := "running", "-"
			if s.Done() {
				finished, d = tableTime(s.Finished), dash(took(s.Started, s.Finished))
			}
			tab.row("  "+s.Name, tableTime(s.Started), finished, d, dash(s.Detail))
		}
		tab.flush()
	}
	fmt.Fprintf(b, "consumers acked: %s\n", dash(strings.Join(st.Acked, ", ")))
	last := "never"
	if !st.LastSuccess.IsZero() {
		last = tableTime(st.LastSuccess)
	}
	next := "- (runs only when asked)"
	if !st.NextDue.IsZero() {
		next = tableTime(st.NextDue)
	}
	fmt.Fprintf(b, "last success:    %s\nnext due:        %s\n", last, next)
	yes := map[bool]string{true: "yes", false: "no"}
	overdue := yes[st.Overdue]
	if st.Overdue {
		overdue += " (no success for more than two periods)"
	}
	stalled := yes[st.Stalled]
	if st.Stalled {
		stalled += " (" + stalledHint(st) + ")"
	}
	fmt.Fprintf(b, "overdue:         %s\nstalled:         %s\n", overdue, stalled)
	holder := "- (no rotator holds it)"
	if st.Holder != "" {
		holder = st.Holder
	}
	paused := yes[st.Paused]
	if st.Paused {
		paused += " (no new runs until `graft rotation resume`)"
	}
	fmt.Fprintf(b, "holder:          %s\n", holder)
	if st.Rotator != "" && st.Rotator != st.Holder {
		fmt.Fprintf(b, "last rotator:    %s\n", st.Rotator)
	}
	fmt.Fprintf(b, "paused:          %s\n", paused)
	if st.Reason != "" {
		fmt.Fprintf(b, "reason:          %s\n", st.Reason)
	}
}

// unstartedAfter is how long run --wait lets a run asked for wait for a
// rotator before it says none has started it: a rotator that runs claims
// a requested run within a second (it looks every 500 ms).
var unstartedAfter = 5 * time.Second

const noRotatorHint = "is a graft-agent with rotations: in its configuration running, with the owner's identity?"

// stalledHint says what a stalled run most likely lacks.
func stalledHint(st rotation.View) string {
	if st.Holder == "" {
		return "no rotator runs it: " + noRotatorHint
	}
	return fmt.Sprintf("its step has outlived its timeout; see the logs of rotator %s", st.Holder)
}

func (a *app) rotationStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status NAME",
		Short: "Show a rotation: its spec, phase, run, users, steps, consumers and flags",
		Example: `  graft rotation status message-processor-pg
  graft rotation status message-processor-pg -o json`,
		Args: args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				r, err := c.GetRotation(ctx, args[0])
				if err != nil {
					return err
				}
				return a.emitRotation(r)
			})
		},
	}
}

// emitRotation shows a rotation's spec and state.
func (a *app) emitRotation(r sdk.Rotation) error {
	return a.Emit(viewRotation(r), func(w io.Writer) error {
		var b strings.Builder
		writeSpec(&b, r.Spec)
		writeState(&b, r.State)
		_, err := io.WriteString(w, b.String())
		return err
	})
}

func (a *app) rotationListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the rotations you may see (you may list or rotate their target)",
		Example: `  graft rotation ls
  graft rotation ls -o yaml`,
		Args: args(0, 0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				rots, err := c.ListRotations(ctx)
				if err != nil {
					return err
				}
				views := make([]rotationView, 0, len(rots))
				for _, r := range rots {
					views = append(views, viewRotation(r))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(rots) == 0 {
						_, err := fmt.Fprintln(a.stderr, "no rotations")
						return err
					}
					tab := newTable(w, "NAME", "DRIVER", "TARGET", "PHASE", "ACTIVE", "LAST-SUCCESS", "NEXT-DUE", "FLAGS")
					for _, r := range rots {
						st := r.State
						tab.row(r.Spec.Name, r.Spec.Driver, r.Spec.Target, string(st.Phase), dash(st.ActiveUser),
							tableTime(st.LastSuccess), tableTime(st.NextDue), flagsText(st))
					}
					return tab.flush()
				})
			})
		},
	}
}

func (a *app) rotationHistoryCmd() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "history NAME [--limit N]",
		Short: "List a rotation's finished runs, newest first",
		Example: `  graft rotation history message-processor-pg
  graft rotation history message-processor-pg --limit 5 -o json   # with each run's steps`,
		Args: args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 1 || limit > 1000 {
				return fmt.Errorf("rotation history: --limit %d: want 1 to 1000", limit)
			}
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				runs, err := c.RotationHistory(ctx, args[0], limit)
				if err != nil {
					return err
				}
				views := make([]runView, 0, len(runs))
				for _, r := range runs {
					views = append(views, viewRun(r))
				}
				return a.Emit(views, func(w io.Writer) error {
					if len(runs) == 0 {
						_, err := fmt.Fprintf(a.stderr, "rotation %s has no finished runs\n", args[0])
						return err
					}
					tab := newTable(w, "RUN", "OUTCOME", "NEW-USER", "ACTIVE-USER", "STARTED", "TOOK", "REASON")
					for _, r := range runs {
						tab.row(fmt.Sprint(r.Run), string(r.Outcome), dash(r.NewUser), dash(r.ActiveUser), tableTime(r.Started),
							dash(took(r.Started, r.Finished)), dash(r.Reason))
					}
					return tab.flush()
				})
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 20, "at most this many runs (1 to 1000)")
	return cmd
}

func (a *app) rotationPauseCmd(pause bool) *cobra.Command {
	use, short, done := "resume NAME", "Let a paused rotation run again", "resumed: runs asked for or due start again"
	if pause {
		use, short, done = "pause NAME", "Hold a rotation's new runs, asked for or due; a run in progress finishes", "paused: no new run starts until `graft rotation resume %[1]s`; a run in progress finishes"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				var (
					r   sdk.Rotation
					err error
				)
				if pause {
					r, err = c.PauseRotation(ctx, args[0])
				} else {
					r, err = c.ResumeRotation(ctx, args[0])
				}
				if err != nil {
					return err
				}
				return a.Emit(viewRotation(r), func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "rotation %s "+done+"\n", r.Spec.Name)
					return err
				})
			})
		},
	}
}

func (a *app) rotationRmCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm NAME [--force]",
		Short: "Delete a rotation and its history; the database users and the published values stay",
		Long: `Delete the rotation NAME, its state and its history. The database users and
the values published at its target stay as they are. A rotation with a run
asked for or in progress is refused unless --force: then its rotator stops at
its next step, wherever the run stands.`,
		Example: `  graft rotation rm message-processor-pg
  graft rotation rm message-processor-pg --force   # even with a run in progress`,
		Args: args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
				if err := c.DeleteRotation(ctx, args[0], force); err != nil {
					return err
				}
				return a.Emit(map[string]any{"name": args[0], "deleted": true}, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "deleted rotation %s (its database users and published values stay)\n", args[0])
					return err
				})
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete it even with a run asked for or in progress")
	return cmd
}

func (a *app) rotationRunCmd() *cobra.Command {
	var (
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "run NAME [--wait [--timeout T]]",
		Short: "Ask for a run now; with --wait, follow it until it is done or failed",
		Long: `Ask for a run of NAME now. The rotator holding the rotation (a graft-agent
with rotations: in its configuration) starts it within about a second.
Refused while the rotation is paused or a run is already in progress.

With --wait it follows the run, printing each step as it begins, changes and
finishes, and exits 0 when the run is done, 1 when it failed (after rolling
back; the reason is printed), and 3 when --timeout passes first:

  graft rotation run message-processor-pg --wait --timeout 15m`,
		Args: args(1, 1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !wait {
				return a.WithClient(cmd, func(ctx context.Context, c *sdk.Client) error {
					r, err := c.RunRotation(ctx, name)
					if err != nil {
						return err
					}
					return a.Emit(viewRotation(r), func(w io.Writer) error {
						_, err := fmt.Fprintf(w, "rotation %s: run %d asked for; follow it with `graft rotation status %s`\n", name, r.State.Run+1, name)
						return err
					})
				})
			}
			if timeout <= 0 {
				return fmt.Errorf("rotation run: --timeout %s: want a positive duration such as 15m", timeout)
			}
			return a.waitRotation(cmd, name, timeout)
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the run until it is done or failed, or --timeout passes")
	cmd.Flags().DurationVar(&timeout, "timeout", 15*time.Minute, "how long --wait waits")
	return cmd
}

// waitRotation asks for a run and follows it: every rotationPoll, each
// call bounded by callLimit, until it is done (nil), failed (an error:
// exit 1) or timeout passes (exit 3). Progress lines go to stdout with
// -o table; -o json and yaml print only the rotation as it ended.
func (a *app) waitRotation(cmd *cobra.Command, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	c, err := a.Client(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	cctx, ccancel := context.WithTimeout(ctx, callLimit)
	r, err := c.RunRotation(cctx, name)
	ccancel()
	if err != nil {
		return err
	}
	want := r.State.Run + 1
	progress := io.Discard
	if a.Output == "table" {
		progress = a.Stdout
	}
	fmt.Fprintf(progress, "rotation %s: run %d asked for\n", name, want)
	p := &runProgress{w: progress, run: want}
	p.show(r.State)
	last := r
	asked, warned := time.Now(), false
	for {
		select {
		case <-ctx.Done():
			if cmd.Context().Err() != nil {
				return cmd.Context().Err()
			}
			return a.rotationTimedOut(name, timeout, want, last)
		case <-time.After(rotationPoll):
		}
		cctx, ccancel := context.WithTimeout(ctx, callLimit)
		r, err := c.GetRotation(cctx, name)
		ccancel()
		if err != nil {
			if ctx.Err() != nil {
				continue // time is up: the last answer stands
			}
			return err
		}
		last = r
		st := r.State
		p.show(st)
		if !warned && st.Phase == rotation.PhaseRequested && st.Holder == "" && time.Since(asked) >= unstartedAfter {
			fmt.Fprintf(progress, "  no rotator has started it after %s: %s\n", unstartedAfter, noRotatorHint)
			warned = true
		}
		if st.Run < want || st.Phase.InProgress() {
			continue
		}
		if st.Run > want {
			return fmt.Errorf("rotation %s: run %d ended and run %d followed before it was seen; see `graft rotation history %s`", name, want, st.Run, name)
		}
		if err := a.Emit(viewRotation(r), func(w io.Writer) error {
			if st.Phase == rotation.PhaseDone {
				_, err := fmt.Fprintf(w, "rotation %s: run %d done in %s: %s is active\n", name, want, dash(took(st.RunStarted, st.RunFinished)), st.ActiveUser)
				return err
			}
			return nil
		}); err != nil {
			return err
		}
		if st.Phase == rotation.PhaseDone {
			return nil
		}
		return fmt.Errorf("rotation %s: run %d %s: %s (active user %s; see `graft rotation history %s`)", name, want, st.Phase, dash(st.Reason), dash(st.ActiveUser), name)
	}
}

// rotationTimedOut shows where the run stood when --wait gave up, and
// exits 3.
func (a *app) rotationTimedOut(name string, timeout time.Duration, want int64, last sdk.Rotation) error {
	st := last.State
	where := string(st.Phase)
	if st.Run == want {
		if s, ok := st.Last(); ok {
			where += ", step " + s.Name
		}
	}
	why := ""
	switch {
	case st.Phase == rotation.PhaseRequested && st.Paused:
		why = fmt.Sprintf("; it is paused: `graft rotation resume %s`", name)
	case st.Phase == rotation.PhaseRequested && st.Holder == "":
		why = "; no rotator has started it: " + noRotatorHint
	case st.Stalled:
		why = "; " + stalledHint(st)
	}
	if err := a.Emit(viewRotation(last), func(io.Writer) error { return nil }); err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "graft: rotation %s: run %d not finished after %s (%s)%s\n", name, want, human(timeout), where, why)
	return exitCode(exitNotRolledOut)
}

func sameStep(a, b rotation.Step) bool {
	return a.Name == b.Name && a.Started.Equal(b.Started) && a.Finished.Equal(b.Finished) && a.Detail == b.Detail
}

// runProgress prints a line whenever the followed run's phase changes, a
// step begins, its detail changes or it finishes. "rolling back" comes
// before the rollback's first step, however many steps one look finds.
type runProgress struct {
	w           io.Writer
	run         int64
	rollingBack bool
	seen        []rotation.Step
}

func (p *runProgress) show(st rotation.View) {
	if st.Run != p.run {
		return // the run asked for has not started yet
	}
	for i, s := range st.Steps {
		if !p.rollingBack && isRollbackStep(s.Name) {
			p.rollBack(st)
		}
		var line string
		switch {
		case i < len(p.seen) && sameStep(p.seen[i], s):
			continue
		case s.Done():
			line = fmt.Sprintf("  %s %s finished in %s", tableTime(s.Finished), s.Name, dash(took(s.Started, s.Finished)))
		case i < len(p.seen) && p.seen[i].Name == s.Name && p.seen[i].Started.Equal(s.Started):
			// The step in progress says how far it has got.
			line = fmt.Sprintf("  %s %s", tableTime(time.Now()), s.Name)
		default:
			line = fmt.Sprintf("  %s %s started", tableTime(s.Started), s.Name)
		}
		if s.Detail != "" {
			line += ": " + s.Detail
		}
		fmt.Fprintln(p.w, line)
	}
	p.seen = append(p.seen[:0], st.Steps...)
	if !p.rollingBack && st.Phase == rotation.PhaseRollingBack {
		p.rollBack(st)
	}
}

// rollBack prints why the run rolls back: the reason it was given then,
// without what a failed rollback added later ("; then …", which the
// run's end prints).
func (p *runProgress) rollBack(st rotation.View) {
	p.rollingBack = true
	why, _, _ := strings.Cut(st.Reason, "; then ")
	fmt.Fprintf(p.w, "  rolling back: %s\n", dash(why))
}

func isRollbackStep(name string) bool {
	return name == rotation.StepRollbackPublish || name == rotation.StepRollbackRollout || name == rotation.StepRollbackDisable
}
