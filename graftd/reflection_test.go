package graftd_test

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/graft-sh/graft/internal/graftdtest"
	"github.com/graft-sh/graft/server"
)

// What grpcurl does against graftd --dev (or --grpc-reflection): server
// reflection lists graft's services and describes them to any caller
// with a token, an application's as well as root's; without a token, or
// with a false one, it answers nothing; a request over the size limit is
// refused.
func TestServerReflection(t *testing.T) {
	g := graftdtest.Start(t)
	conn, err := grpc.NewClient(g.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ask := func(token string, req *reflectionpb.ServerReflectionRequest) (*reflectionpb.ServerReflectionResponse, error) {
		ctx := t.Context()
		if token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		}
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return nil, err
		}
		defer stream.CloseSend()
		if err := stream.Send(req); err != nil {
			return nil, err
		}
		return stream.Recv()
	}
	list := &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}
	_, appToken := g.TokenFile(t, "app:orders", "app")
	for _, token := range []string{g.Token, appToken} {
		resp, err := ask(token, list)
		if err != nil {
			t.Fatalf("list services: %v", err)
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		for _, want := range []string{"graft.v1.KVService", "graft.v1.DBCredService", "grpc.reflection.v1.ServerReflection"} {
			if !slices.Contains(names, want) {
				t.Errorf("listed services %v lack %s", names, want)
			}
		}
	}
	resp, err := ask(appToken, &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "graft.v1.KVService"}})
	if err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("describe graft.v1.KVService: %v, %v", resp, err)
	}

	odd, err := ask(appToken, &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "graft.v1.\x00\n\x1b[31m"}})
	if err != nil || odd.GetErrorResponse() == nil {
		t.Errorf("describe a symbol with control characters: %v, %v; want an error response on a stream that goes on", odd, err)
	}

	for _, token := range []string{"", "graft_not-a-token"} {
		if _, err := ask(token, list); status.Code(err) != codes.Unauthenticated {
			t.Errorf("list services with token %q: %v, want Unauthenticated", token, err)
		}
	}
	huge := strings.Repeat("x", server.DefaultMaxRequestBytes+1)
	if _, err := ask(appToken, &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: huge}}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a request of %d bytes: %v, want ResourceExhausted", len(huge), err)
	}
}
