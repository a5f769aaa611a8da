package acl

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"
)

func TestPrincipalFromCert(t *testing.T) {
	cert := func(cn, uri string) *x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
		if uri != "" {
			u, err := url.Parse(uri)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = []*url.URL{u}
		}
		return c
	}
	tests := []struct {
		name        string
		cert        *x509.Certificate
		trustDomain string
		allowCN     bool
		want        string // "" : refused
	}{
		{"spiffe app in the domain", cert("x", "spiffe://example.org/app/pet"), "example.org", false, "app:pet"},
		{"spiffe user in the domain", cert("", "spiffe://example.org/user/dora"), "example.org", false, "user:dora"},
		{"spiffe id in another domain", cert("", "spiffe://evil.org/app/pet"), "example.org", false, ""},
		{"spiffe id in another domain, cn allowed", cert("app:pet", "spiffe://evil.org/app/pet"), "example.org", true, ""},
		// The forged acknowledgement of issue 18: same CA, no SPIFFE ID.
		{"cn under a trust domain", cert("app:pet", ""), "example.org", false, ""},
		{"cn under a trust domain, opted in", cert("app:pet", ""), "example.org", true, "app:pet"},
		{"cn without a trust domain", cert("user:alice", ""), "", false, "user:alice"},
		{"any spiffe domain without a trust domain", cert("", "spiffe://any.org/app/pet"), "", false, "app:pet"},
		{"root cn", cert(RootPrincipal, ""), "", false, ""},
		{"cn that is no principal", cert("alice", ""), "", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PrincipalFromCert(tt.cert, CertIdentities{TrustDomain: tt.trustDomain, AllowCN: tt.allowCN})
			if tt.want == "" {
				if !errors.Is(err, ErrUntrustedCert) {
					t.Fatalf("PrincipalFromCert = %v, %v; want ErrUntrustedCert", p, err)
				}
				return
			}
			if err != nil || p.Name != tt.want {
				t.Fatalf("PrincipalFromCert = %v, %v; want %s", p.Name, err, tt.want)
			}
		})
	}
}
