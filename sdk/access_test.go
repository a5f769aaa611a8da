package sdk_test

import (
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/sdk"
)

func TestTokens(t *testing.T) {
	g := graftdtest.Start(t)
	ctx := t.Context()
	admin := newClient(t, g.Addr, g.Token)

	token, info, err := admin.CreateToken(ctx, "app:message-processor", []string{"app"}, 720*time.Hour)
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	if !strings.HasPrefix(token, "graft_") || !strings.HasPrefix(info.Accessor, "acc_") || info.Principal != "app:message-processor" ||
		!slices.Equal(info.Roles, []string{"app"}) || info.Creator != "root" || time.Since(info.Created) > time.Minute {
		t.Fatalf("CreateToken = %q, %+v", token, info)
	}
	if d := info.Expires.Sub(info.Created); d < 719*time.Hour || d > 721*time.Hour {
		t.Fatalf("a 720h token expires %s after creation", d)
	}

	app := newClient(t, g.Addr, token)
	id, err := app.WhoAmI(ctx)
	want := sdk.Identity{Principal: "app:message-processor", Roles: []string{"app"}, Method: "token", Accessor: info.Accessor, Expires: info.Expires}
	if err != nil || id.Principal != want.Principal || !slices.Equal(id.Roles, want.Roles) || id.Method != want.Method ||
		id.Accessor != want.Accessor || !id.Expires.Equal(want.Expires) {
		t.Fatalf("WhoAmI = %+v, %v; want %+v", id, err, want)
	}
	if _, err := app.Put(ctx, "/app/message-processor/config/x", []byte("v")); err != nil {
		t.Fatalf("app Put of its own path: %v", err)
	}
	_, err = app.Get(ctx, "/dba/orders/postgres/password")
	if !errors.Is(err, sdk.ErrPermissionDenied) || err.Error() != "permission denied: app:message-processor may not read /dba/orders/postgres/password" {
		t.Fatalf("app Get of /dba: %v", err)
	}
	if _, err := app.ListTokens(ctx, ""); !errors.Is(err, sdk.ErrPermissionDenied) {
		t.Fatalf("app ListTokens: %v, want permission denied", err)
	}

	_, other, err := admin.CreateToken(ctx, "user:alice", []string{"dba", "app"}, 0)
	if err != nil || !other.Expires.IsZero() || !slices.Equal(other.Roles, []string{"app", "dba"}) {
		t.Fatalf("CreateToken without ttl = %+v, %v; want no expiry and sorted roles", other, err)
	}
	infos, err := admin.ListTokens(ctx, "app:message-processor")
	if err != nil || len(infos) != 1 || infos[0].Accessor != info.Accessor {
		t.Fatalf("ListTokens(app:message-processor) = %+v, %v", infos, err)
	}
	all, err := admin.ListTokens(ctx, "")
	if err != nil || !slices.ContainsFunc(all, func(i sdk.TokenInfo) bool { return i.Accessor == other.Accessor }) || len(all) < 2 {
		t.Fatalf("ListTokens() = %+v, %v", all, err)
	}

	// Revoked by the token itself; refused by this graftd at once.
	revoked, err := admin.RevokeToken(ctx, token)
	if err != nil || revoked.Accessor != info.Accessor {
		t.Fatalf("RevokeToken(token) = %+v, %v", revoked, err)
	}
	if _, err := app.WhoAmI(ctx); !errors.Is(err, sdk.ErrUnauthenticated) {
		t.Fatalf("WhoAmI right after revocation: %v; want unauthenticated", err)
	}
	_, err = admin.RevokeToken(ctx, token)
	if !errors.Is(err, sdk.ErrNotFound) || strings.Contains(err.Error(), token) {
		t.Fatalf("second RevokeToken: %v; want not found, without the token", err)
	}
	if _, err := admin.RevokeToken(ctx, other.Accessor); err != nil {
		t.Fatalf("RevokeToken(accessor): %v", err)
	}

	_, _, err = admin.CreateToken(ctx, "app:x", []string{"nosuch"}, 0)
	if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), `role "nosuch" has no policy`) {
		t.Fatalf("CreateToken with an unknown role: %v", err)
	}
}

// A token works as soon as CreateToken has returned it, on the graftd
// that issued it: a deploy script hands it straight to the application.
func TestCreatedTokenWorksAtOnce(t *testing.T) {
	g := graftdtest.Start(t)
	ctx := t.Context()
	admin := newClient(t, g.Addr, g.Token)
	for i := range 20 {
		token, info, err := admin.CreateToken(ctx, "app:deployed", []string{"app"}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := newClient(t, g.Addr, token).WhoAmI(ctx); err != nil {
			t.Fatalf("token %d (%s), just created, refused: %v", i, info.Accessor, err)
		}
	}
}

func TestPolicies(t *testing.T) {
	g := graftdtest.Start(t)
	ctx := t.Context()
	c := newClient(t, g.Addr, g.Token)

	pols, err := c.ListPolicies(ctx)
	var roles []string
	for _, p := range pols {
		roles = append(roles, p.Role)
	}
	if err != nil || !slices.Equal(roles, []string{"admin", "app", "dba"}) {
		t.Fatalf("ListPolicies on a dev graftd = %v, %v", roles, err)
	}
	init, err := c.InitPolicies(ctx, false)
	if err != nil || len(init.Installed) != 0 || !slices.Equal(init.Kept, []string{"admin", "app", "dba"}) || len(init.Differing) != 0 {
		t.Fatalf("InitPolicies = %+v, %v; want all kept, none differing", init, err)
	}

	_, err = c.PutPolicy(ctx, []byte("role: ci\nrules:\n  - allow: [read, fly]\n    paths: [/ci/**]\n"))
	if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("PutPolicy with an unknown action: %v; want invalid argument naming line 3", err)
	}
	doc := []byte("role: ci\nrules:\n  - allow: [read, list]\n    paths: [/ci/**]\n")
	p, err := c.PutPolicy(ctx, doc)
	if err != nil || p.Role != "ci" || p.Author != "root" || p.Updated.IsZero() {
		t.Fatalf("PutPolicy = %+v, %v", p, err)
	}
	if got, err := c.GetPolicy(ctx, "ci"); err != nil || string(got.YAML) != string(doc) {
		t.Fatalf("GetPolicy(ci) = %q, %v; want %q", got.YAML, err, doc)
	}

	// A policy change applies on this graftd as soon as PutPolicy returns.
	d, err := c.CheckPolicy(ctx, "app:ci", []string{"ci"}, "read", "/ci/settings")
	if err != nil {
		t.Fatalf("CheckPolicy: %v", err)
	}
	if !d.Allowed || d.Role != "ci" || !strings.HasPrefix(d.Rule, "allow ") || d.Reason == "" || !slices.Equal(d.EffectiveRoles, []string{"ci"}) {
		t.Fatalf("CheckPolicy right after PutPolicy = %+v", d)
	}
	d, err = c.CheckPolicy(ctx, "app:ci", []string{"ci"}, "write", "/ci/settings")
	if err != nil || d.Allowed || d.Rule != "" || d.Reason == "" {
		t.Fatalf("CheckPolicy denied = %+v, %v", d, err)
	}
	if _, err := c.CheckPolicy(ctx, "app:ci", nil, "fly", "/ci"); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("CheckPolicy with an unknown action: %v", err)
	}

	if err := c.DeletePolicy(ctx, "ci"); err != nil {
		t.Fatalf("DeletePolicy: %v", err)
	}
	if _, err := c.GetPolicy(ctx, "ci"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("GetPolicy after DeletePolicy: %v", err)
	}
	if err := c.DeletePolicy(ctx, "dba"); err != nil {
		t.Fatal(err)
	}
	init, err = c.InitPolicies(ctx, false)
	if err != nil || !slices.Equal(init.Installed, []string{"dba"}) || !slices.Equal(init.Kept, []string{"admin", "app"}) {
		t.Fatalf("InitPolicies after deleting dba = %+v, %v", init, err)
	}
	// A default role's policy as an older graftd installed it (dba could
	// not rotate yet) is kept, and said to differ.
	if _, err := c.PutPolicy(ctx, []byte("role: dba\nrules:\n  - allow: [read, list, write, delete, share]\n    paths: [/dba/**]\n")); err != nil {
		t.Fatal(err)
	}
	init, err = c.InitPolicies(ctx, false)
	if err != nil || len(init.Installed) != 0 || !slices.Equal(init.Differing, []string{"dba"}) {
		t.Fatalf("InitPolicies with an old dba policy = %+v, %v; want dba kept and differing", init, err)
	}
}

func TestQueryAudit(t *testing.T) {
	g := graftdtest.Start(t)
	ctx := t.Context()
	admin := newClient(t, g.Addr, g.Token)
	token, _, err := admin.CreateToken(ctx, "app:message-processor", []string{"app"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	app := newClient(t, g.Addr, token)
	before := time.Now()
	e, err := app.Put(ctx, "/app/message-processor/config/x", []byte("audit-must-not-see-this"))
	if err != nil {
		t.Fatal(err)
	}

	recs, err := admin.QueryAudit(ctx, sdk.AuditFilter{PathPrefix: "/app/message-processor", Principal: "app:message-processor", Since: before.Add(-time.Second)})
	if err != nil {
		t.Fatalf("QueryAudit: %v", err)
	}
	i := slices.IndexFunc(recs, func(r sdk.AuditRecord) bool { return r.Method == "Put" && r.Revision == e.Revision })
	if i < 0 {
		t.Fatalf("QueryAudit has no Put at revision %d: %+v", e.Revision, recs)
	}
	if r := recs[i]; r.Path != e.Path || r.Action != "write" || !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(r.ValueHMAC) || r.Time.Before(before.Add(-time.Second)) || r.RequestID == "" {
		t.Fatalf("audit record of the Put = %+v", r)
	}
	for _, r := range recs {
		if r.Principal != "app:message-processor" || !strings.HasPrefix(r.Path, "/app/message-processor/") {
			t.Fatalf("QueryAudit returned a record outside the filter: %+v", r)
		}
	}
	if recs, err := admin.QueryAudit(ctx, sdk.AuditFilter{Limit: 1}); err != nil || len(recs) != 1 {
		t.Fatalf("QueryAudit(Limit 1) = %d records, %v", len(recs), err)
	}
	if _, err := admin.QueryAudit(ctx, sdk.AuditFilter{Limit: -1}); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("QueryAudit(Limit -1): %v", err)
	}
	if _, err := app.QueryAudit(ctx, sdk.AuditFilter{}); !errors.Is(err, sdk.ErrPermissionDenied) {
		t.Fatalf("QueryAudit by an application: %v", err)
	}
}
