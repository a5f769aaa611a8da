// Package registry is where graftd keeps blue/green rotations: each
// rotation's spec and persisted state (with the passwords of a run in
// progress, sealed), the lease-bound claim of the rotator that runs it,
// and its finished runs. It decides nothing about databases; it checks
// every transition a rotator asks for against rotation.Check, and only
// from the holder of the claim, so two rotators never drive one run. A
// claim belongs to its holder and to the principal that took it: the
// holder string is shown to whoever may list the rotation, so it proves
// nothing by itself.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/graft-sh/graft/dbcred"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/store"
)

// ErrConflict says the rotation is not in a state that allows the
// request: paused, already running, claimed by another rotator, or
// changed since the caller read it.
var ErrConflict = errors.New("rotation conflict")

// keepRuns is how many finished runs a rotation's history keeps.
const keepRuns = 100

// record is a rotation as stored.
type record struct {
	Spec  rotation.Spec  `json:"spec"`
	State rotation.State `json:"state"`
	// Sealed holds the run's Secrets as JSON, sealed under the
	// rotation's name and run; empty between runs.
	Sealed []byte `json:"sealed,omitempty"`
}

// claim is the lease-bound record of the rotator running a rotation.
type claim struct {
	Holder    string    `json:"holder"`
	Principal string    `json:"principal"`
	Lease     int64     `json:"lease"`
	Since     time.Time `json:"since"`
}

// Rotation is a spec and the view of its state.
type Rotation struct {
	Spec  rotation.Spec
	State rotation.View
}

// Registry keeps the rotations of one store.
type Registry struct {
	store  *store.Store
	recs   *store.Records[record]
	claims *store.Records[claim]
	runs   *store.Records[rotation.Run]
	now    func() time.Time
}

// New returns the registry of the store's rotations.
func New(s *store.Store) *Registry {
	return &Registry{
		store:  s,
		recs:   store.NewRecords[record](s, store.SpaceRotations),
		claims: store.NewRecords[claim](s, store.SpaceRotationClaims),
		runs:   store.NewRecords[rotation.Run](s, store.SpaceRotationRuns),
		now:    func() time.Time { return time.Now().UTC() },
	}
}

func checkPath(p string) error {
	_, err := store.ParsePath(p)
	return err
}

func notFound(name string) error {
	return fmt.Errorf("rotation %s: %w (see `graft rotation ls`)", name, store.ErrNotFound)
}

// Normalize fills in a spec's defaults and validates it: what Create
// would refuse, without storing anything.
func Normalize(spec rotation.Spec) (rotation.Spec, error) {
	spec.Normalize()
	return spec, spec.Validate(checkPath)
}

// Create stores a new rotation, refusing a name taken or a target or
// users another rotation has.
func (r *Registry) Create(ctx context.Context, spec rotation.Spec) (Rotation, error) {
	spec, err := Normalize(spec)
	if err != nil {
		return Rotation{}, err
	}
	spec.Created = r.now()
	rec := record{Spec: spec, State: rotation.State{Phase: rotation.PhaseIdle}}
	var out Rotation
	err = store.RetryConflicts(ctx, "create rotation "+spec.Name, func() (bool, error) {
		all, rev, err := r.recs.List(ctx)
		if err != nil {
			return false, err
		}
		for _, o := range all {
			if o.Key == spec.Name {
				return false, fmt.Errorf("%w: rotation %s exists (see `graft rotation status %s`; `graft rotation rm` it first to create it again)", ErrConflict, spec.Name, spec.Name)
			}
			if err := spec.Overlaps(o.Value.Spec); err != nil {
				return false, err
			}
		}
		op, err := r.recs.PutOp(spec.Name, rec)
		if err != nil {
			return false, err
		}
		wrev, ok, err := r.store.Commit(ctx, []store.Cond{r.recs.Absent(spec.Name), r.recs.Since(rev)}, op)
		if err != nil || !ok {
			return false, err
		}
		out = r.rotation(rec, "", wrev)
		return true, nil
	})
	return out, err
}

func (r *Registry) rotation(rec record, holder string, version int64) Rotation {
	return Rotation{Spec: rec.Spec, State: rotation.NewView(rec.Spec, rec.State, holder, version, r.now())}
}

// Get returns the rotation named name.
func (r *Registry) Get(ctx context.Context, name string) (Rotation, error) {
	rec, err := r.recs.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return Rotation{}, notFound(name)
	}
	if err != nil {
		return Rotation{}, err
	}
	return r.rotation(rec.Value, r.holder(ctx, name), rec.Revision), nil
}

// holder returns who holds the claim on name, or "".
func (r *Registry) holder(ctx context.Context, name string) string {
	c, err := r.claims.Get(ctx, name)
	if err != nil {
		return ""
	}
	return c.Value.Holder
}

// List returns every rotation, by name.
func (r *Registry) List(ctx context.Context) ([]Rotation, error) {
	recs, _, err := r.recs.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list rotations: %w", err)
	}
	claims, _, err := r.claims.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list rotation claims: %w", err)
	}
	holders := map[string]string{}
	for _, c := range claims {
		holders[c.Key] = c.Value.Holder
	}
	out := make([]Rotation, len(recs))
	for i, rec := range recs {
		out[i] = r.rotation(rec.Value, holders[rec.Key], rec.Revision)
	}
	return out, nil
}

// update applies change to the rotation's record in a guarded write,
// again if another write came first.
func (r *Registry) update(ctx context.Context, name, what string, change func(*record) error) (Rotation, error) {
	var out Rotation
	err := store.RetryConflicts(ctx, what+" rotation "+name, func() (bool, error) {
		cur, err := r.recs.Get(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return false, notFound(name)
		}
		if err != nil {
			return false, err
		}
		rec := cur.Value
		if err := change(&rec); errors.Is(err, errUnchanged) {
			out = r.rotation(rec, r.holder(ctx, name), cur.Revision)
			return true, nil
		} else if err != nil {
			return false, err
		}
		op, err := r.recs.PutOp(name, rec)
		if err != nil {
			return false, err
		}
		rev, ok, err := r.store.Commit(ctx, []store.Cond{r.recs.At(name, cur.Revision)}, op)
		if err != nil || !ok {
			return false, err
		}
		out = r.rotation(rec, r.holder(ctx, name), rev)
		return true, nil
	})
	return out, err
}

// errUnchanged, from update's change, leaves the record as it is.
var errUnchanged = errors.New("unchanged")

// Reseal seals again, under the keyring's primary key, the secrets of
// every run in progress that another key sealed: a re-encryption sweep's
// part for rotations, so that a run which spans a key rotation can finish
// once the old key has left the ring. It returns how many sealed records
// it examined and how many it rewrote. A rewrite moves the record's
// version, which the rotator's next step finds changed: it claims again
// and goes on from the stored step, as after any conflict.
func (r *Registry) Reseal(ctx context.Context) (examined, resealed int64, err error) {
	recs, _, err := r.recs.List(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("re-seal rotations: %w", err)
	}
	for _, rec := range recs {
		if len(rec.Value.Sealed) == 0 {
			continue
		}
		examined++
		did := false // by the attempt that was written
		_, err := r.update(ctx, rec.Key, "re-seal", func(cur *record) error {
			did = false
			if len(cur.Sealed) == 0 {
				return errUnchanged // the run ended meanwhile
			}
			sealed, changed, err := r.store.ResealSecret(secretName(rec.Key, cur.State.Run), cur.Sealed)
			if err != nil {
				return err
			}
			if !changed {
				return errUnchanged
			}
			cur.Sealed, did = sealed, true
			return nil
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return examined, resealed, err
		}
		if err == nil && did {
			resealed++
		}
	}
	return examined, resealed, nil
}

// Run asks for a run now, on behalf of by.
func (r *Registry) Run(ctx context.Context, name, by string) (Rotation, error) {
	return r.update(ctx, name, "run", func(rec *record) error {
		st := &rec.State
		switch {
		case st.Paused:
			return fmt.Errorf("%w: rotation %s is paused: `graft rotation resume %s` first", ErrConflict, name, name)
		case st.Phase.InProgress():
			return fmt.Errorf("%w: rotation %s is already %s (run %d): see `graft rotation status %s`", ErrConflict, name, st.Phase, st.Run, name)
		}
		st.Phase, st.Requested, st.RequestedBy = rotation.PhaseRequested, r.now(), by
		return nil
	})
}

// SetPaused pauses or resumes the rotation.
func (r *Registry) SetPaused(ctx context.Context, name string, paused bool) (Rotation, error) {
	what := "resume"
	if paused {
		what = "pause"
	}
	return r.update(ctx, name, what, func(rec *record) error {
		rec.State.Paused = paused
		return nil
	})
}

// Delete removes the rotation, its claim and its history; with a run in
// progress only if force.
func (r *Registry) Delete(ctx context.Context, name string, force bool) error {
	cur, err := r.recs.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound(name)
	}
	if err != nil {
		return err
	}
	if st := cur.Value.State; st.Phase.InProgress() && !force {
		return fmt.Errorf("%w: rotation %s is %s (run %d, step %s): wait until it is done or failed, or delete it with --force (its rotator then stops at its next step, and the users stay as they are)", ErrConflict, name, st.Phase, st.Run, lastStep(st))
	}
	_, ok, err := r.store.Commit(ctx, []store.Cond{r.recs.At(name, cur.Revision)},
		r.recs.DeleteOp(name), r.claims.DeleteOp(name), r.runs.DeletePrefixOp(name+"/"))
	if err != nil {
		return fmt.Errorf("delete rotation %s: %w", name, err)
	}
	if !ok {
		return fmt.Errorf("%w: rotation %s changed while it was being deleted; try again", ErrConflict, name)
	}
	return nil
}

func lastStep(st rotation.State) string {
	if l, ok := st.Last(); ok {
		return l.Name
	}
	return "none yet"
}

// History returns up to limit finished runs, newest first.
func (r *Registry) History(ctx context.Context, name string, limit int) ([]rotation.Run, error) {
	if _, err := r.recs.Get(ctx, name); errors.Is(err, store.ErrNotFound) {
		return nil, notFound(name)
	} else if err != nil {
		return nil, err
	}
	recs, _, err := r.runs.ListPrefix(ctx, name+"/")
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 20
	}
	var out []rotation.Run
	for i := len(recs) - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, recs[i].Value)
	}
	return out, nil
}

func runKey(name string, run int64) string { return fmt.Sprintf("%s/%019d", name, run) }

func secretName(name string, run int64) string { return fmt.Sprintf("rotation/%s/run/%d", name, run) }

// Claimed is the answer to a claim.
type Claimed struct {
	Held     bool
	Holder   string
	Rotation Rotation
	// Secrets are the run's passwords, for the holder only.
	Secrets *rotation.Secrets
}

// holds says whether c is the claim of holder as principal. The holder
// string alone is not enough: `graft rotation status` shows it to
// everyone who may list the rotation.
func (c claim) holds(holder, principal string) bool {
	return c.Holder == holder && c.Principal == principal
}

// Claim takes the claim on name for holder, as principal, or renews it
// when they have it, and returns the rotation with, for them, the
// passwords of its run in progress. A live claim of another holder or
// another principal is not theirs (Held false, no passwords) until it
// expires.
func (r *Registry) Claim(ctx context.Context, name, holder, principal string, ttl time.Duration) (Claimed, error) {
	if holder == "" || len(holder) > 253 || strings.ContainsAny(holder, "\n") {
		return Claimed{}, fmt.Errorf("%w: holder %q: want an id of 1 to 253 characters (the rotator's host and pid by default)", rotation.ErrInvalid, holder)
	}
	if ttl == 0 {
		ttl = rotation.DefaultClaimTTL
	}
	if ttl < rotation.MinClaimTTL || ttl > rotation.MaxClaimTTL {
		return Claimed{}, fmt.Errorf("%w: claim ttl %s: want %s to %s", rotation.ErrInvalid, ttl, rotation.MinClaimTTL, rotation.MaxClaimTTL)
	}
	var out Claimed
	err := store.RetryConflicts(ctx, "claim rotation "+name, func() (bool, error) {
		rec, err := r.recs.Get(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return false, notFound(name)
		}
		if err != nil {
			return false, err
		}
		c, err := r.claims.Get(ctx, name)
		switch {
		case err == nil && c.Value.holds(holder, principal):
			if err := r.store.LeaseByID(c.Value.Lease).Renew(ctx); errors.Is(err, store.ErrLeaseLost) {
				// Expired a moment ago; its record goes with it.
				return false, nil
			} else if err != nil {
				return false, err
			}
		case err == nil:
			out = Claimed{Holder: c.Value.Holder, Rotation: r.rotation(rec.Value, c.Value.Holder, rec.Revision)}
			return true, nil
		case errors.Is(err, store.ErrNotFound):
			lease, err := r.store.GrantLease(ctx, ttl)
			if err != nil {
				return false, err
			}
			op, err := r.claims.PutOp(name, claim{Holder: holder, Principal: principal, Lease: lease.ID(), Since: r.now()})
			if err != nil {
				return false, err
			}
			_, ok, err := r.store.Commit(ctx, []store.Cond{r.claims.Absent(name), r.recs.Present(name)}, op.WithLease(lease))
			if err != nil || !ok {
				lease.Revoke(context.WithoutCancel(ctx))
				return false, err
			}
		default:
			return false, err
		}
		secrets, err := r.open(name, rec.Value)
		if err != nil {
			return false, err
		}
		out = Claimed{Held: true, Holder: holder, Rotation: r.rotation(rec.Value, holder, rec.Revision), Secrets: secrets}
		return true, nil
	})
	return out, err
}

// scrub removes from st's reason and step details whatever may be the
// admin DSN's password or a piece of it. The rotator scrubs its errors
// already; this holds for any rotator, since what is stored here is
// audited, logged and shown to whoever may list the rotation. Texts
// already stored as they are stay (scrubbed when they were stored), so a
// DSN changed since cannot make a finished step differ from its record.
func (r *Registry) scrub(ctx context.Context, spec rotation.Spec, prev, st rotation.State) rotation.State {
	e, err := r.store.Get(ctx, spec.Admin+"/"+rotation.KeyDSN)
	if err != nil || len(e.Value) == 0 {
		return st
	}
	dsn := string(e.Value)
	clean := func(s string) string {
		if s == "" {
			return s
		}
		return dbcred.ScrubDSN(errors.New(s), dsn).Error()
	}
	if st.Reason != prev.Reason {
		st.Reason = clean(st.Reason)
	}
	st.Steps = slices.Clone(st.Steps)
	for i := range st.Steps {
		if i >= len(prev.Steps) || st.Steps[i].Detail != prev.Steps[i].Detail {
			st.Steps[i].Detail = clean(st.Steps[i].Detail)
		}
	}
	return st
}

func (r *Registry) open(name string, rec record) (*rotation.Secrets, error) {
	if len(rec.Sealed) == 0 {
		return nil, nil
	}
	plain, err := r.store.OpenSecret(secretName(name, rec.State.Run), rec.Sealed)
	if err != nil {
		return nil, fmt.Errorf("rotation %s: the passwords of run %d: %w", name, rec.State.Run, err)
	}
	var s rotation.Secrets
	if err := json.Unmarshal(plain, &s); err != nil {
		return nil, fmt.Errorf("rotation %s: the passwords of run %d do not decode: %w", name, rec.State.Run, err)
	}
	return &s, nil
}

// Release gives the claim on name of holder, as principal, up; a claim
// they do not have is left alone.
func (r *Registry) Release(ctx context.Context, name, holder, principal string) error {
	c, err := r.claims.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !c.Value.holds(holder, principal)) {
		return nil
	}
	if err != nil {
		return err
	}
	return r.store.LeaseByID(c.Value.Lease).Revoke(ctx)
}

// Advance persists next, which must follow from the state at its
// version along the state machine, for holder as principal, who must
// hold the claim. secrets, at the first step of a run, are sealed into
// the record; a finished run drops them and goes into the history.
func (r *Registry) Advance(ctx context.Context, name, holder, principal string, next rotation.View, secrets *rotation.Secrets) (Rotation, error) {
	cur, err := r.recs.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return Rotation{}, notFound(name)
	}
	if err != nil {
		return Rotation{}, err
	}
	c, err := r.claims.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !c.Value.holds(holder, principal)) {
		return Rotation{}, fmt.Errorf("%w: rotation %s: %s as %s does not hold its claim (it expired, or another rotator has it): claim it again", ErrConflict, name, holder, principal)
	}
	if err != nil {
		return Rotation{}, err
	}
	if cur.Revision != next.Version {
		return Rotation{}, fmt.Errorf("%w: rotation %s changed since version %d (now %d): read it again", ErrConflict, name, next.Version, cur.Revision)
	}
	rec := cur.Value
	st := r.scrub(ctx, rec.Spec, rec.State, next.State)
	// Only graftd's own rpcs change these.
	st.Paused, st.Requested, st.RequestedBy, st.Rotator = rec.State.Paused, rec.State.Requested, rec.State.RequestedBy, holder
	if err := rotation.Check(rec.Spec, rec.State, st, secrets != nil, r.now()); err != nil {
		return Rotation{}, err
	}
	ops := []store.Op{}
	if secrets != nil {
		plain, err := json.Marshal(secrets)
		if err != nil {
			return Rotation{}, err
		}
		if rec.Sealed, err = r.store.SealSecret(secretName(name, st.Run), plain); err != nil {
			return Rotation{}, err
		}
	}
	if st.Phase == rotation.PhaseDone || st.Phase == rotation.PhaseFailed {
		rec.Sealed = nil
		op, err := r.runs.PutOp(runKey(name, st.Run), rotation.RunOf(st))
		if err != nil {
			return Rotation{}, err
		}
		ops = append(ops, op)
		if st.Run > keepRuns {
			ops = append(ops, r.runs.DeleteOp(runKey(name, st.Run-keepRuns)))
		}
	}
	rec.State = st
	op, err := r.recs.PutOp(name, rec)
	if err != nil {
		return Rotation{}, err
	}
	ops = append(ops, op)
	rev, ok, err := r.store.Commit(ctx, []store.Cond{r.recs.At(name, cur.Revision), r.claims.At(name, c.Revision)}, ops...)
	if err != nil {
		return Rotation{}, fmt.Errorf("advance rotation %s: %w", name, err)
	}
	if !ok {
		return Rotation{}, fmt.Errorf("%w: rotation %s or its claim changed while the step was being stored: claim it and read it again", ErrConflict, name)
	}
	return r.rotation(rec, holder, rev), nil
}
