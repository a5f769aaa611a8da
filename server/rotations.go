package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/rotation"
	"github.com/graft-sh/graft/rotation/registry"
	"github.com/graft-sh/graft/store"
)

// Rotations keeps blue/green rotations and their claims.
type Rotations interface {
	Create(ctx context.Context, spec rotation.Spec) (registry.Rotation, error)
	Get(ctx context.Context, name string) (registry.Rotation, error)
	List(ctx context.Context) ([]registry.Rotation, error)
	Run(ctx context.Context, name, by string) (registry.Rotation, error)
	SetPaused(ctx context.Context, name string, paused bool) (registry.Rotation, error)
	Delete(ctx context.Context, name string, force bool) error
	History(ctx context.Context, name string, limit int) ([]rotation.Run, error)
	Claim(ctx context.Context, name, holder, principal string, ttl time.Duration) (registry.Claimed, error)
	Release(ctx context.Context, name, holder, principal string) error
	Advance(ctx context.Context, name, holder, principal string, next rotation.View, secrets *rotation.Secrets) (registry.Rotation, error)
	Reseal(ctx context.Context) (examined, resealed int64, err error)
}

var _ Rotations = (*registry.Registry)(nil)

func rotationProto(r registry.Rotation) *graftv1.Rotation {
	return &graftv1.Rotation{Spec: r.Spec.Proto(), State: r.State.Proto()}
}

// rotationFor returns the rotation named name if the caller may do act on
// its target. One the caller may not even list is not found, so names
// do not leak to who may not see them.
func (s *Server) rotationFor(ctx context.Context, name string, act acl.Action) (registry.Rotation, error) {
	if s.rotations == nil {
		return registry.Rotation{}, unavailable("this graftd keeps no rotations")
	}
	if err := rotation.CheckName(name); err != nil {
		return registry.Rotation{}, err
	}
	rot, err := s.rotations.Get(ctx, name)
	if err != nil {
		return registry.Rotation{}, err
	}
	target := rot.Spec.Target
	if !s.may(ctx, acl.ActionList, target) && !s.may(ctx, acl.ActionRotate, target) {
		return registry.Rotation{}, fmt.Errorf("rotation %s: %w (see `graft rotation ls`)", name, store.ErrNotFound)
	}
	if act != acl.ActionList && !s.may(ctx, act, target) {
		return registry.Rotation{}, &acl.DeniedError{Principal: principal(ctx).Name, Action: act, Path: target}
	}
	noteAudit(ctx, target, "rotation "+name)
	return rot, nil
}

// CreateRotation implements graftv1.RotationServiceServer.
func (s *Server) CreateRotation(ctx context.Context, req *graftv1.CreateRotationRequest) (*graftv1.CreateRotationResponse, error) {
	if s.rotations == nil {
		return nil, toStatus(unavailable("this graftd keeps no rotations"))
	}
	spec, err := registry.Normalize(rotation.SpecFromProto(req.GetSpec()))
	if err != nil {
		return nil, toStatus(err)
	}
	p := principal(ctx)
	noteAudit(ctx, spec.Target, "rotation "+spec.Name)
	if !s.may(ctx, acl.ActionRotate, spec.Target) {
		return nil, toStatus(&acl.DeniedError{Principal: p.Name, Action: acl.ActionRotate, Path: spec.Target})
	}
	dsn := spec.Admin + "/" + rotation.KeyDSN
	if !s.may(ctx, acl.ActionRead, dsn) {
		return nil, toStatus(&acl.DeniedError{Principal: p.Name, Action: acl.ActionRead, Path: dsn})
	}
	if _, err := s.store.Get(ctx, dsn); errors.Is(err, store.ErrNotFound) {
		return nil, toStatus(fmt.Errorf("rotation %s: the admin DSN %s %w: put it first (`graft put %s '%s'`)", spec.Name, dsn, store.ErrNotFound, dsn, rotation.ExampleDSN(spec.Driver)))
	} else if err != nil {
		return nil, toStatus(err)
	}
	spec.Creator = p.Name
	rot, err := s.rotations.Create(ctx, spec)
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.CreateRotationResponse{Rotation: rotationProto(rot)}, nil
}

// GetRotation implements graftv1.RotationServiceServer.
func (s *Server) GetRotation(ctx context.Context, req *graftv1.GetRotationRequest) (*graftv1.GetRotationResponse, error) {
	rot, err := s.rotationFor(ctx, req.GetName(), acl.ActionList)
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.GetRotationResponse{Rotation: rotationProto(rot)}, nil
}

// ListRotations implements graftv1.RotationServiceServer.
func (s *Server) ListRotations(ctx context.Context, _ *graftv1.ListRotationsRequest) (*graftv1.ListRotationsResponse, error) {
	if s.rotations == nil {
		return &graftv1.ListRotationsResponse{}, nil
	}
	all, err := s.rotations.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.ListRotationsResponse{}
	for _, r := range all {
		if s.may(ctx, acl.ActionList, r.Spec.Target) || s.may(ctx, acl.ActionRotate, r.Spec.Target) {
			resp.Rotations = append(resp.Rotations, rotationProto(r))
		}
	}
	return resp, nil
}

// RunRotation implements graftv1.RotationServiceServer.
func (s *Server) RunRotation(ctx context.Context, req *graftv1.RunRotationRequest) (*graftv1.RunRotationResponse, error) {
	if _, err := s.rotationFor(ctx, req.GetName(), acl.ActionRotate); err != nil {
		return nil, toStatus(err)
	}
	rot, err := s.rotations.Run(ctx, req.GetName(), principal(ctx).Name)
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.RunRotationResponse{Rotation: rotationProto(rot)}, nil
}

// PauseRotation implements graftv1.RotationServiceServer.
func (s *Server) PauseRotation(ctx context.Context, req *graftv1.PauseRotationRequest) (*graftv1.PauseRotationResponse, error) {
	rot, err := s.setPaused(ctx, req.GetName(), true)
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.PauseRotationResponse{Rotation: rotationProto(rot)}, nil
}

// ResumeRotation implements graftv1.RotationServiceServer.
func (s *Server) ResumeRotation(ctx context.Context, req *graftv1.ResumeRotationRequest) (*graftv1.ResumeRotationResponse, error) {
	rot, err := s.setPaused(ctx, req.GetName(), false)
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.ResumeRotationResponse{Rotation: rotationProto(rot)}, nil
}

func (s *Server) setPaused(ctx context.Context, name string, paused bool) (registry.Rotation, error) {
	if _, err := s.rotationFor(ctx, name, acl.ActionRotate); err != nil {
		return registry.Rotation{}, err
	}
	return s.rotations.SetPaused(ctx, name, paused)
}

// DeleteRotation implements graftv1.RotationServiceServer.
func (s *Server) DeleteRotation(ctx context.Context, req *graftv1.DeleteRotationRequest) (*graftv1.DeleteRotationResponse, error) {
	if _, err := s.rotationFor(ctx, req.GetName(), acl.ActionRotate); err != nil {
		return nil, toStatus(err)
	}
	if err := s.rotations.Delete(ctx, req.GetName(), req.GetForce()); err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.DeleteRotationResponse{}, nil
}

// RotationHistory implements graftv1.RotationServiceServer.
func (s *Server) RotationHistory(ctx context.Context, req *graftv1.RotationHistoryRequest) (*graftv1.RotationHistoryResponse, error) {
	if _, err := s.rotationFor(ctx, req.GetName(), acl.ActionList); err != nil {
		return nil, toStatus(err)
	}
	if req.GetLimit() < 0 || req.GetLimit() > 1000 {
		return nil, toStatus(invalid("rotation history: limit %d: want 1 to 1000 (0: 20)", req.GetLimit()))
	}
	runs, err := s.rotations.History(ctx, req.GetName(), int(req.GetLimit()))
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &graftv1.RotationHistoryResponse{}
	for _, r := range runs {
		resp.Runs = append(resp.Runs, r.Proto())
	}
	return resp, nil
}

// ClaimRotation implements graftv1.RotationServiceServer.
func (s *Server) ClaimRotation(ctx context.Context, req *graftv1.ClaimRotationRequest) (*graftv1.ClaimRotationResponse, error) {
	if _, err := s.rotationFor(ctx, req.GetName(), acl.ActionRotate); err != nil {
		return nil, toStatus(err)
	}
	c, err := s.rotations.Claim(ctx, req.GetName(), req.GetHolder(), principal(ctx).Name, time.Duration(req.GetTtlSeconds())*time.Second)
	if err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.ClaimRotationResponse{Held: c.Held, Holder: c.Holder, Rotation: rotationProto(c.Rotation), Secrets: c.Secrets.Proto()}, nil
}

// ReleaseRotation implements graftv1.RotationServiceServer.
func (s *Server) ReleaseRotation(ctx context.Context, req *graftv1.ReleaseRotationRequest) (*graftv1.ReleaseRotationResponse, error) {
	if _, err := s.rotationFor(ctx, req.GetName(), acl.ActionRotate); err != nil {
		return nil, toStatus(err)
	}
	if err := s.rotations.Release(ctx, req.GetName(), req.GetHolder(), principal(ctx).Name); err != nil {
		return nil, toStatus(err)
	}
	return &graftv1.ReleaseRotationResponse{}, nil
}

// AdvanceRotation implements graftv1.RotationServiceServer. A run that
// ends in failure gets its reason into the audit record: a rollback is
// something an operator must be able to find.
func (s *Server) AdvanceRotation(ctx context.Context, req *graftv1.AdvanceRotationRequest) (*graftv1.AdvanceRotationResponse, error) {
	prev, err := s.rotationFor(ctx, req.GetName(), acl.ActionRotate)
	if err != nil {
		return nil, toStatus(err)
	}
	next := rotation.StateFromProto(req.GetState())
	rot, err := s.rotations.Advance(ctx, req.GetName(), req.GetHolder(), principal(ctx).Name, next, rotation.SecretsFromProto(req.GetSecrets()))
	if err != nil {
		return nil, toStatus(err)
	}
	st := rot.State
	step := lastStepName(st.State)
	detail := fmt.Sprintf("rotation %s run %d: %s, step %s", rot.Spec.Name, st.Run, st.Phase, step)
	if st.Phase != prev.State.Phase && (st.Phase == rotation.PhaseRollingBack || st.Phase == rotation.PhaseFailed) {
		detail += ": " + st.Reason
	}
	noteAudit(ctx, rot.Spec.Target, detail)
	if st.Phase != prev.State.Phase {
		s.log.Info("rotation", "rotation", rot.Spec.Name, "run", st.Run, "phase", st.Phase, "step", step, "reason", st.Reason)
	}
	return &graftv1.AdvanceRotationResponse{Rotation: rotationProto(rot)}, nil
}

func lastStepName(st rotation.State) string {
	if l, ok := st.Last(); ok {
		return l.Name
	}
	return "none"
}
