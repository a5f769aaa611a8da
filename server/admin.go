package server

import (
	"context"
	"fmt"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// KeyringStatus implements graftv1.AdminServiceServer.
func (s *Server) KeyringStatus(ctx context.Context, _ *graftv1.KeyringStatusRequest) (*graftv1.KeyringStatusResponse, error) {
	k := s.store.Keyring()
	return &graftv1.KeyringStatusResponse{PrimaryKeyId: k.Primary(), KeyIds: k.IDs()}, nil
}

// ReencryptSweep implements graftv1.AdminServiceServer.
func (s *Server) ReencryptSweep(ctx context.Context, _ *graftv1.ReencryptSweepRequest) (*graftv1.ReencryptSweepResponse, error) {
	if s.reload != nil {
		if err := s.reload(); err != nil {
			return nil, toStatus(fmt.Errorf("keyring sweep: %w", err))
		}
	}
	res, err := s.store.Reencrypt(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if s.rotations != nil {
		// The passwords of the rotation runs in progress.
		examined, resealed, err := s.rotations.Reseal(ctx)
		res.Examined, res.Reencrypted = res.Examined+examined, res.Reencrypted+resealed
		if err != nil {
			return nil, toStatus(fmt.Errorf("keyring sweep: %w", err))
		}
	}
	s.log.Info("re-encryption sweep done", "primary_key", s.store.Keyring().Primary(), "examined", res.Examined, "reencrypted", res.Reencrypted)
	return &graftv1.ReencryptSweepResponse{PrimaryKeyId: s.store.Keyring().Primary(), Examined: res.Examined, Reencrypted: res.Reencrypted}, nil
}
