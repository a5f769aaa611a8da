package acl

import "errors"

// Sentinel errors. Callers test them with errors.Is; the typed errors
// (*DeniedError, *PolicyError, *PatternError, *LastAdminError) wrap them.
var (
	ErrNoToken       = errors.New("no token: pass one as `authorization: Bearer <token>` (graft: --token or GRAFT_TOKEN)")
	ErrUnknownToken  = errors.New("unknown or revoked token")
	ErrExpiredToken  = errors.New("token expired")
	ErrNotReady      = errors.New("token cache not loaded yet; retry")
	ErrUntrustedCert = errors.New("client certificate names no graft principal")

	ErrInvalidPolicy    = errors.New("invalid policy")
	ErrInvalidPattern   = errors.New("invalid pattern")
	ErrPermissionDenied = errors.New("permission denied")
	ErrLastAdmin        = errors.New("last admin policy")
)
