package sdk

import (
	"context"
	"time"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/rotation"
)

// Rotation is a blue/green rotation: its spec and the view of its state.
type Rotation struct {
	Spec  rotation.Spec
	State rotation.View
}

func rotationFrom(p *graftv1.Rotation) Rotation {
	return Rotation{Spec: rotation.SpecFromProto(p.GetSpec()), State: rotation.StateFromProto(p.GetState())}
}

// CreateRotation stores a new rotation; graftd fills in its defaults. The
// caller needs rotate on the target and read on the admin DSN, which
// must exist.
func (c *Client) CreateRotation(ctx context.Context, spec rotation.Spec) (Rotation, error) {
	resp, err := c.rotations.CreateRotation(ctx, &graftv1.CreateRotationRequest{Spec: spec.Proto()})
	if err != nil {
		return Rotation{}, wrap(ctx, err)
	}
	return rotationFrom(resp.GetRotation()), nil
}

// GetRotation returns a rotation; it never holds a password.
func (c *Client) GetRotation(ctx context.Context, name string) (Rotation, error) {
	resp, err := c.rotations.GetRotation(ctx, &graftv1.GetRotationRequest{Name: name})
	if err != nil {
		return Rotation{}, wrap(ctx, err)
	}
	return rotationFrom(resp.GetRotation()), nil
}

// ListRotations returns the rotations the caller may see, by name.
func (c *Client) ListRotations(ctx context.Context) ([]Rotation, error) {
	resp, err := c.rotations.ListRotations(ctx, &graftv1.ListRotationsRequest{})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	out := make([]Rotation, 0, len(resp.GetRotations()))
	for _, r := range resp.GetRotations() {
		out = append(out, rotationFrom(r))
	}
	return out, nil
}

// RunRotation asks for a run now; the rotator holding the claim starts
// it within about a second.
func (c *Client) RunRotation(ctx context.Context, name string) (Rotation, error) {
	resp, err := c.rotations.RunRotation(ctx, &graftv1.RunRotationRequest{Name: name})
	if err != nil {
		return Rotation{}, wrap(ctx, err)
	}
	return rotationFrom(resp.GetRotation()), nil
}

// PauseRotation holds new runs; a run in progress finishes.
func (c *Client) PauseRotation(ctx context.Context, name string) (Rotation, error) {
	resp, err := c.rotations.PauseRotation(ctx, &graftv1.PauseRotationRequest{Name: name})
	if err != nil {
		return Rotation{}, wrap(ctx, err)
	}
	return rotationFrom(resp.GetRotation()), nil
}

// ResumeRotation lets a paused rotation run again.
func (c *Client) ResumeRotation(ctx context.Context, name string) (Rotation, error) {
	resp, err := c.rotations.ResumeRotation(ctx, &graftv1.ResumeRotationRequest{Name: name})
	if err != nil {
		return Rotation{}, wrap(ctx, err)
	}
	return rotationFrom(resp.GetRotation()), nil
}

// DeleteRotation removes a rotation and its history; force deletes it
// with a run in progress.
func (c *Client) DeleteRotation(ctx context.Context, name string, force bool) error {
	_, err := c.rotations.DeleteRotation(ctx, &graftv1.DeleteRotationRequest{Name: name, Force: force})
	return wrap(ctx, err)
}

// RotationHistory returns up to limit finished runs (0: 20), newest
// first.
func (c *Client) RotationHistory(ctx context.Context, name string, limit int) ([]rotation.Run, error) {
	resp, err := c.rotations.RotationHistory(ctx, &graftv1.RotationHistoryRequest{Name: name, Limit: int32(limit)})
	if err != nil {
		return nil, wrap(ctx, err)
	}
	out := make([]rotation.Run, 0, len(resp.GetRuns()))
	for _, r := range resp.GetRuns() {
		out = append(out, rotation.RunFromProto(r))
	}
	return out, nil
}

// RotationClaim is a rotator's claim on a rotation.
type RotationClaim struct {
	Held     bool
	Holder   string
	Rotation Rotation
	// Secrets are the passwords of the run in progress, for the holder.
	Secrets *rotation.Secrets
}

// ClaimRotation takes, or renews, holder's claim on a rotation for ttl.
func (c *Client) ClaimRotation(ctx context.Context, name, holder string, ttl time.Duration) (RotationClaim, error) {
	resp, err := c.rotations.ClaimRotation(ctx, &graftv1.ClaimRotationRequest{Name: name, Holder: holder, TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		return RotationClaim{}, wrap(ctx, err)
	}
	return RotationClaim{Held: resp.GetHeld(), Holder: resp.GetHolder(), Rotation: rotationFrom(resp.GetRotation()), Secrets: rotation.SecretsFromProto(resp.GetSecrets())}, nil
}

// ReleaseRotation gives holder's claim up.
func (c *Client) ReleaseRotation(ctx context.Context, name, holder string) error {
	_, err := c.rotations.ReleaseRotation(ctx, &graftv1.ReleaseRotationRequest{Name: name, Holder: holder})
	return wrap(ctx, err)
}

// AdvanceRotation persists a step for holder, from the version next was
// made from; secrets go with a run's first step.
func (c *Client) AdvanceRotation(ctx context.Context, name, holder string, next rotation.View, secrets *rotation.Secrets) (Rotation, error) {
	resp, err := c.rotations.AdvanceRotation(ctx, &graftv1.AdvanceRotationRequest{Name: name, Holder: holder, State: next.Proto(), Secrets: secrets.Proto()})
	if err != nil {
		return Rotation{}, wrap(ctx, err)
	}
	return rotationFrom(resp.GetRotation()), nil
}
