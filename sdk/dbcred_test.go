package sdk_test

import (
	"context"
	"errors"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/sdk"
)

// fakeLeases answers the dynamic-credential services with fixed answers
// and keeps the last request, so that a test sees what the SDK sends
// and what it makes of what comes back, field by field.
type fakeLeases struct {
	graftv1.UnimplementedDBCredServiceServer
	graftv1.UnimplementedLeaseServiceServer
	mu    sync.Mutex
	req   proto.Message // the last request
	lease *graftv1.Lease
	role  *graftv1.DBCredRole
}

func (f *fakeLeases) PutRole(_ context.Context, r *graftv1.PutRoleRequest) (*graftv1.PutRoleResponse, error) {
	f.record(r)
	return &graftv1.PutRoleResponse{Revision: 7}, nil
}

func (f *fakeLeases) GetRole(_ context.Context, r *graftv1.GetRoleRequest) (*graftv1.GetRoleResponse, error) {
	f.record(r)
	if r.GetPath() == "/missing" {
		return nil, status.Error(codes.NotFound, "get role /missing: not found")
	}
	return &graftv1.GetRoleResponse{Role: f.role, Source: "/dba/pp/creds/ro", Revision: 9}, nil
}

func (f *fakeLeases) ListRoles(_ context.Context, r *graftv1.ListRolesRequest) (*graftv1.ListRolesResponse, error) {
	f.record(r)
	return &graftv1.ListRolesResponse{Roles: []*graftv1.RoleItem{{Path: "/dba/pp/creds/ro", Role: f.role}}}, nil
}

func (f *fakeLeases) DeleteRole(_ context.Context, r *graftv1.DeleteRoleRequest) (*graftv1.DeleteRoleResponse, error) {
	f.record(r)
	return &graftv1.DeleteRoleResponse{Revision: 11}, nil
}

func (f *fakeLeases) Issue(_ context.Context, r *graftv1.IssueRequest) (*graftv1.IssueResponse, error) {
	f.record(r)
	return &graftv1.IssueResponse{Lease: f.lease, Username: "v-orders-ro-x", Password: "pw"}, nil
}

func (f *fakeLeases) ListLeases(_ context.Context, r *graftv1.ListLeasesRequest) (*graftv1.ListLeasesResponse, error) {
	f.record(r)
	return &graftv1.ListLeasesResponse{Leases: []*graftv1.Lease{f.lease}, ReaperPaused: true}, nil
}

func (f *fakeLeases) RenewLease(_ context.Context, r *graftv1.RenewLeaseRequest) (*graftv1.RenewLeaseResponse, error) {
	f.record(r)
	return &graftv1.RenewLeaseResponse{Lease: f.lease}, nil
}

func (f *fakeLeases) RevokeLease(_ context.Context, r *graftv1.RevokeLeaseRequest) (*graftv1.RevokeLeaseResponse, error) {
	f.record(r)
	return &graftv1.RevokeLeaseResponse{Lease: f.lease, Warning: "the user may still exist"}, nil
}

func (f *fakeLeases) RevokePrefix(_ context.Context, r *graftv1.RevokePrefixRequest) (*graftv1.RevokePrefixResponse, error) {
	f.record(r)
	return &graftv1.RevokePrefixResponse{Revoked: 3, Failed: []*graftv1.Lease{f.lease}}, nil
}

func (f *fakeLeases) SetReaper(_ context.Context, r *graftv1.SetReaperRequest) (*graftv1.SetReaperResponse, error) {
	f.record(r)
	return &graftv1.SetReaperResponse{Paused: r.GetPaused()}, nil
}

func (f *fakeLeases) record(r proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.req = r
}

func (f *fakeLeases) last() proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.req
}

func startFakeLeases(t *testing.T, f *fakeLeases) *sdk.Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	graftv1.RegisterDBCredServiceServer(s, f)
	graftv1.RegisterLeaseServiceServer(s, f)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return newClient(t, lis.Addr().String(), "t")
}

// The SDK sends what it is given, leaves zero durations unset for
// graftd's defaults, and reads every field of every answer; an unset
// time is the zero time, not 1970.
func TestDBCredConversions(t *testing.T) {
	issued := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f := &fakeLeases{
		role: &graftv1.DBCredRole{Driver: "postgres", Admin: "/dba/pp/admin/postgres", CreationSql: []string{"CREATE ROLE a; GRANT b"},
			RevocationSql: []string{"DROP ROLE"}, RenewSql: []string{"ALTER ROLE"}, DefaultTtl: durationpb.New(time.Hour), MaxTtl: durationpb.New(24 * time.Hour),
			UsernameTemplate: "v-{{random}}", PasswordLength: 40, PasswordAlphabet: "abc", MaxLeases: 5, MaxLeasesPerPrincipal: 2},
		lease: &graftv1.Lease{Id: "l-1", Role: "/dba/pp/creds/ro", IssuedAt: "/app/orders/replicated/creds/ro", Principal: "app:orders",
			Username: "v-orders-ro-x", State: "active", IssueTime: timestamppb.New(issued), ExpireTime: timestamppb.New(issued.Add(time.Hour)),
			Renewable: true, RevokeAttempts: 2, LastError: "boom", Holder: "web-1"},
	}
	c := startFakeLeases(t, f)
	ctx := t.Context()
	wantRole := sdk.DBCredRole{Driver: "postgres", Admin: "/dba/pp/admin/postgres", CreationSQL: []string{"CREATE ROLE a; GRANT b"},
		RevocationSQL: []string{"DROP ROLE"}, RenewSQL: []string{"ALTER ROLE"}, DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour,
		UsernameTemplate: "v-{{random}}", PasswordLength: 40, PasswordAlphabet: "abc", MaxLeases: 5, MaxLeasesPerPrincipal: 2}
	wantLease := sdk.Lease{ID: "l-1", Role: "/dba/pp/creds/ro", IssuedAt: "/app/orders/replicated/creds/ro", Principal: "app:orders",
		Username: "v-orders-ro-x", State: sdk.LeaseActive, IssueTime: issued, ExpireTime: issued.Add(time.Hour),
		Renewable: true, RevokeAttempts: 2, LastError: "boom", Holder: "web-1"} // MaxExpireTime unset: zero

	rev, err := c.PutRole(ctx, "/dba/pp/creds/ro", wantRole)
	if err != nil || rev != 7 {
		t.Fatalf("PutRole = %d, %v", rev, err)
	}
	if got := f.last().(*graftv1.PutRoleRequest); got.GetPath() != "/dba/pp/creds/ro" || !proto.Equal(got.GetRole(), f.role) {
		t.Errorf("PutRole sent %v, want %v", got, f.role)
	}
	if _, err := c.PutRole(ctx, "/r", sdk.DBCredRole{Driver: "mysql", PasswordLength: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	if got := f.last().(*graftv1.PutRoleRequest).GetRole(); got.DefaultTtl != nil || got.MaxTtl != nil || got.GetPasswordLength() != 1<<31-1 {
		t.Errorf("PutRole with zero TTLs and a huge length sent %v; want the TTLs unset, for graftd's defaults, and the length out of range", got)
	}

	info, err := c.GetRole(ctx, "/app/orders/replicated/creds/ro")
	if want := (sdk.RoleInfo{Path: "/app/orders/replicated/creds/ro", Role: wantRole, Source: "/dba/pp/creds/ro", Revision: 9}); err != nil || !reflect.DeepEqual(info, want) {
		t.Errorf("GetRole = %+v, %v\nwant %+v", info, err, want)
	}
	if _, err := c.GetRole(ctx, "/missing"); !errors.Is(err, sdk.ErrNotFound) || err.Error() != "get role /missing: not found" {
		t.Errorf("GetRole of a missing role: %v, want sdk.ErrNotFound with graftd's message", err)
	}
	roles, err := c.ListRoles(ctx, "/dba")
	if want := []sdk.RoleInfo{{Path: "/dba/pp/creds/ro", Role: wantRole}}; err != nil || !reflect.DeepEqual(roles, want) || f.last().(*graftv1.ListRolesRequest).GetPrefix() != "/dba" {
		t.Errorf("ListRoles = %+v, %v", roles, err)
	}
	if rev, err := c.DeleteRole(ctx, "/dba/pp/creds/ro"); err != nil || rev != 11 {
		t.Errorf("DeleteRole = %d, %v", rev, err)
	}

	cred, err := c.Issue(ctx, "/app/orders/replicated/creds/ro", 0)
	if want := (sdk.IssuedCredential{Lease: wantLease, Username: "v-orders-ro-x", Password: "pw"}); err != nil || !reflect.DeepEqual(cred, want) {
		t.Errorf("Issue = %+v, %v\nwant %+v", cred, err, want)
	}
	if got := f.last().(*graftv1.IssueRequest); got.Ttl != nil {
		t.Errorf("Issue with no TTL sent %v", got.Ttl)
	}
	if _, err := c.Issue(ctx, "/x", 90*time.Second); err != nil || f.last().(*graftv1.IssueRequest).GetTtl().AsDuration() != 90*time.Second {
		t.Errorf("Issue with a TTL: %v, sent %v", err, f.last())
	}

	leases, paused, err := c.ListLeases(ctx, "/dba/pp", "app:orders")
	if err != nil || !paused || !reflect.DeepEqual(leases, []sdk.Lease{wantLease}) {
		t.Errorf("ListLeases = %+v, %v, %v", leases, paused, err)
	}
	if got := f.last().(*graftv1.ListLeasesRequest); got.GetPrefix() != "/dba/pp" || got.GetPrincipal() != "app:orders" {
		t.Errorf("ListLeases sent %v", got)
	}
	if l, err := c.RenewLease(ctx, "l-1", 30*time.Minute); err != nil || l.ID != "l-1" || f.last().(*graftv1.RenewLeaseRequest).GetIncrement().AsDuration() != 30*time.Minute {
		t.Errorf("RenewLease = %+v, %v; sent %v", l, err, f.last())
	}
	if _, err := c.RenewLease(ctx, "l-1", 0); err != nil || f.last().(*graftv1.RenewLeaseRequest).Increment != nil {
		t.Errorf("RenewLease with no increment: %v; sent %v", err, f.last())
	}
	l, warning, err := c.RevokeLease(ctx, "l-1", true)
	if err != nil || l.ID != "l-1" || warning != "the user may still exist" || !f.last().(*graftv1.RevokeLeaseRequest).GetForce() {
		t.Errorf("RevokeLease = %+v, %q, %v; sent %v", l, warning, err, f.last())
	}
	n, failed, err := c.RevokePrefix(ctx, "/dba/pp/creds")
	if err != nil || n != 3 || !reflect.DeepEqual(failed, []sdk.Lease{wantLease}) || f.last().(*graftv1.RevokePrefixRequest).GetPrefix() != "/dba/pp/creds" {
		t.Errorf("RevokePrefix = %d, %+v, %v", n, failed, err)
	}
	for _, want := range []bool{true, false} {
		if got, err := c.SetReaper(ctx, want); err != nil || got != want {
			t.Errorf("SetReaper(%v) = %v, %v", want, got, err)
		}
	}
}
