package graftd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/graft-sh/graft/acl"
	"github.com/graft-sh/graft/audit"
)

// MaxBreakGlassTTL bounds how long an emergency root token lives.
const MaxBreakGlassTTL = 24 * time.Hour

// BreakGlass mints a short-lived root token for an emergency, straight
// into etcd: whoever runs it needs graftd's own etcd, NATS and keyring
// access, not a graft token. The audit record (who, why, which accessor)
// is written before the token exists; if it cannot be, no token is made.
func BreakGlass(ctx context.Context, cfg Config, log *slog.Logger, ttl time.Duration, reason, operator string) (string, error) {
	if cfg.Dev {
		return "", errors.New("break-glass: dev mode already has a root token in <data-dir>/root-token")
	}
	if reason == "" {
		return "", errors.New("break-glass: say why with --reason; it goes into the audit log")
	}
	if ttl <= 0 || ttl > MaxBreakGlassTTL {
		return "", fmt.Errorf("break-glass: --ttl %s: want a duration up to %s", ttl, MaxBreakGlassTTL)
	}
	if err := cfg.Validate(); err != nil {
		return "", err
	}
	d := &Daemon{cfg: cfg, log: log}
	defer d.close()
	if err := d.openCore(ctx); err != nil {
		return "", err
	}
	token := acl.NewToken()
	now := time.Now().UTC()
	rec := acl.TokenRecord{
		Hash:      acl.HashToken(token),
		Accessor:  acl.NewAccessor(),
		Principal: acl.RootPrincipal,
		Created:   now,
		Creator:   "break-glass:" + operator,
		Expires:   now.Add(ttl),
	}
	if err := d.audit.Append(ctx, audit.Record{
		RequestID: rec.Accessor,
		Principal: rec.Creator,
		Method:    "BreakGlass",
		Action:    string(acl.ActionAdmin),
		Path:      "/",
		Result:    "ok",
		Detail:    fmt.Sprintf("root token %s until %s: %s", rec.Accessor, rec.Expires.Format(time.RFC3339), reason),
	}); err != nil {
		return "", fmt.Errorf("break-glass: the audit log is unavailable, so no token was made: %w", err)
	}
	tokens, err := acl.NewTokens(acl.TokensConfig{Store: d.store, Logger: log})
	if err != nil {
		return "", err
	}
	if err := tokens.Put(ctx, rec); err != nil {
		return "", err
	}
	return token, nil
}
