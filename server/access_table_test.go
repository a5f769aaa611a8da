package server

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/graft-sh/graft/acl"
	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
)

// rpcsInProto lists every rpc of package graft.v1 by full method name, from
// the descriptors generated from proto/.
func rpcsInProto(t *testing.T) map[string]protoreflect.MethodDescriptor {
	t.Helper()
	_ = graftv1.File_graft_v1_kv_proto // make sure the package registered its files
	out := map[string]protoreflect.MethodDescriptor{}
	protoregistry.GlobalFiles.RangeFilesByPackage("graft.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			svc := f.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				out["/"+string(svc.FullName())+"/"+string(m.Name())] = m
			}
		}
		return true
	})
	if len(out) == 0 {
		t.Fatal("found no rpcs in package graft.v1")
	}
	return out
}

// Every rpc in proto/ has an access rule, so a new rpc cannot reach
// production unchecked; and the table names no rpc that does not exist.
func TestEveryRPCHasAnAccessRule(t *testing.T) {
	rpcs := rpcsInProto(t)
	for name, m := range rpcs {
		a, ok := accessTable[name]
		if !ok {
			t.Errorf("rpc %s has no entry in accessTable (server/access.go)", name)
			continue
		}
		if !a.anyone && a.action == "" {
			t.Errorf("rpc %s: its access rule names no action", name)
		}
		// A rule's path getter must fit the rpc's request type.
		if a.path != nil || a.value != nil || a.dryRun != nil {
			req, err := protoregistry.GlobalTypes.FindMessageByName(m.Input().FullName())
			if err != nil {
				t.Fatalf("rpc %s: request type: %v", name, err)
			}
			msg := req.New().Interface()
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("rpc %s: its access rule reads another request type: %v", name, r)
					}
				}()
				if _, err := accessOf(name, msg); err != nil {
					t.Errorf("rpc %s: %v", name, err)
				}
			}()
		}
	}
	for name := range accessTable {
		if _, ok := rpcs[name]; !ok {
			t.Errorf("accessTable has an entry for %s, which is no rpc in proto/", name)
		}
	}
}

func TestAnRPCWithoutAnAccessRuleIsRefused(t *testing.T) {
	_, err := accessOf("/graft.v1.KVService/Nope", nil)
	if err == nil || !strings.Contains(err.Error(), "no access rule") {
		t.Fatalf("accessOf an unknown rpc = %v", err)
	}
	if !errors.Is(err, acl.ErrPermissionDenied) || status.Code(toStatus(err)) != codes.PermissionDenied {
		t.Fatalf("status of an rpc without a rule = %v, want PermissionDenied", toStatus(err))
	}
}
