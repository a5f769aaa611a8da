package graftd_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	graftv1 "github.com/graft-sh/graft/gen/graft/v1"
	"github.com/graft-sh/graft/graftd"
	"github.com/graft-sh/graft/internal/graftdtest"
)

// testCA issues certificates for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "graft test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf certificate and key as PEM.
func (ca *testCA) issue(t *testing.T, cn string, uri string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startMTLS starts a graftd that serves TLS with a certificate of ca and
// verifies client certificates against ca; more sets the rest of its
// configuration. The pool it returns trusts ca.
func startMTLS(t *testing.T, ca *testCA, more func(*graftd.Config)) (*graftdtest.Graftd, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	serverCert, serverKey := ca.issue(t, "graftd", "", true)
	g := graftdtest.Start(t, graftdtest.WithConfig(func(c *graftd.Config) {
		c.TLSCertFile = writeFile(t, dir, "server.pem", serverCert)
		c.TLSKeyFile = writeFile(t, dir, "server-key.pem", serverKey)
		c.ClientCAFile = writeFile(t, dir, "ca.pem", ca.pem)
		more(c)
	}))
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	return g, roots
}

// dialCert connects to addr, trusting roots, with issuer's certificate
// for cn and uri (none when issuer is nil); the test closes it.
func dialCert(t *testing.T, addr string, roots *x509.CertPool, issuer *testCA, cn, uri string) *grpc.ClientConn {
	t.Helper()
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if issuer != nil {
		certPEM, keyPEM := issuer.issue(t, cn, uri, false)
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestMutualTLSIdentities starts graftd with a client CA and connects with
// certificates instead of tokens.
func TestMutualTLSIdentities(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	g, roots := startMTLS(t, ca, func(c *graftd.Config) { c.TrustDomain = "graft.test" })
	var conn *grpc.ClientConn
	connect := func(issuer *testCA, cn, uri string) (graftv1.KVServiceClient, graftv1.TokenServiceClient) {
		t.Helper()
		conn = dialCert(t, g.Addr, roots, issuer, cn, uri)
		return graftv1.NewKVServiceClient(conn), graftv1.NewTokenServiceClient(conn)
	}
	ctx := context.Background()

	// A pattern share made before the application's first connection: its
	// first request, over mTLS, already finds the copy (graftd never
	// issued its certificate, so that request is where it appears).
	// (A token takes precedence over the certificate: these are root's.)
	kv, tokens := connect(ca, "ignored", "spiffe://graft.test/app/message-processor")
	rootCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+g.Token)
	if _, err := kv.Put(rootCtx, &graftv1.PutRequest{Path: "/shared/ca/pem", Value: []byte("pem")}); err != nil {
		t.Fatal(err)
	}
	if _, err := graftv1.NewReplicationServiceClient(conn).Share(rootCtx, &graftv1.ShareRequest{Source: "/shared/ca", Destinations: []string{"/app/+/replicated/ca"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(rootCtx, &graftv1.GetRequest{Path: "/app/message-processor/replicated/ca/pem"}); status.Code(err) != codes.NotFound {
		t.Fatalf("the copy before the application first connected: %v, want NotFound", err)
	}
	got, err := kv.Get(ctx, &graftv1.GetRequest{Path: "/app/message-processor/replicated/ca/pem"})
	if err != nil || string(got.GetEntry().GetValue()) != "pem" {
		t.Fatalf("the application's first request, for its copy: %v, %v", got, err)
	}
	who, err := tokens.WhoAmI(ctx, &graftv1.WhoAmIRequest{})
	if err != nil || who.GetPrincipal() != "app:message-processor" || who.GetMethod() != "certificate" {
		t.Fatalf("whoami over mTLS = %v, %v", who, err)
	}
	if _, err := kv.Put(ctx, &graftv1.PutRequest{Path: "/app/message-processor/config/x", Value: []byte("v")}); err != nil {
		t.Fatalf("app writing its own tree over mTLS: %v", err)
	}
	if _, err := kv.Get(ctx, &graftv1.GetRequest{Path: "/dba/x"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("app reading /dba over mTLS: %v, want PermissionDenied", err)
	}

	_, tokens = connect(ca, "x", "spiffe://elsewhere.test/app/message-processor")
	if _, err := tokens.WhoAmI(ctx, &graftv1.WhoAmIRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("foreign trust domain: %v, want Unauthenticated", err)
	}

	// With a trust domain, a certificate from the same CA without a
	// SPIFFE ID is no identity, whatever its common name says (issue 18:
	// CN=app:pet forged an application's acknowledgements).
	for _, cn := range []string{"user:alice", "app:message-processor"} {
		_, tokens = connect(ca, cn, "")
		if _, err := tokens.WhoAmI(ctx, &graftv1.WhoAmIRequest{}); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "allow-cn-identities") {
			t.Fatalf("common-name identity %s under a trust domain: %v, want Unauthenticated naming --allow-cn-identities", cn, err)
		}
	}

	// A certificate from another CA does not get past the handshake.
	_, tokens = connect(other, "user:mallory", "spiffe://graft.test/user/mallory")
	if _, err := tokens.WhoAmI(ctx, &graftv1.WhoAmIRequest{}); err == nil {
		t.Fatal("a certificate from an unknown CA was accepted")
	}
}

// --allow-cn-identities accepts a common name under a trust domain, for
// clusters whose CA signs only client certificates it means as
// identities.
func TestCommonNameIdentitiesOptIn(t *testing.T) {
	ca := newCA(t)
	g, roots := startMTLS(t, ca, func(c *graftd.Config) {
		c.TrustDomain = "graft.test"
		c.AllowCNIdentities = true
	})
	whoami := func(cn, uri string) (*graftv1.WhoAmIResponse, error) {
		c := dialCert(t, g.Addr, roots, ca, cn, uri)
		return graftv1.NewTokenServiceClient(c).WhoAmI(t.Context(), &graftv1.WhoAmIRequest{})
	}
	if who, err := whoami("user:alice", ""); err != nil || who.GetPrincipal() != "user:alice" {
		t.Fatalf("a common name with --allow-cn-identities: %v, %v", who, err)
	}
	if _, err := whoami("x", "spiffe://elsewhere.test/app/pet"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a SPIFFE ID in another trust domain with --allow-cn-identities: %v, want Unauthenticated", err)
	}
}
