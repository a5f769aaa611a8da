package acl

import (
	"crypto/x509"
	"fmt"
	"strings"

	"github.com/graft-sh/graft/store"
)

// CertIdentities says which client certificate identities graftd accepts.
type CertIdentities struct {
	// TrustDomain restricts SPIFFE IDs to one trust domain; empty accepts
	// any, and common names too.
	TrustDomain string
	// AllowCN also accepts a common-name identity when TrustDomain is
	// set. Off by default: with a trust domain, any certificate the CA
	// ever signed (a server's, a CI job's) whose CN happens to read
	// "app:<name>" would otherwise be that application.
	AllowCN bool
}

// PrincipalFromCert maps a verified client certificate to a principal. A
// URI SAN spiffe://<trustDomain>/app/<name> becomes "app:<name>" with role
// "app"; spiffe://<trustDomain>/user/<name> becomes "user:<name>" (roles
// come from policy bindings). Without a SPIFFE ID the subject common name
// is the principal, as written ("user:alice"), but only when no trust
// domain is configured or ids.AllowCN opts in: a trust domain says
// identities are SPIFFE IDs in it.
func PrincipalFromCert(cert *x509.Certificate, ids CertIdentities) (Principal, error) {
	trustDomain := ids.TrustDomain
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		if trustDomain != "" && u.Host != trustDomain {
			return Principal{}, fmt.Errorf("%w: SPIFFE ID %s is not in trust domain %s", ErrUntrustedCert, u, trustDomain)
		}
		kind, name, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if !ok || !validName(name) || (kind != "app" && kind != "user") {
			return Principal{}, fmt.Errorf("%w: SPIFFE ID %s is not .../app/<name> or .../user/<name>", ErrUntrustedCert, u)
		}
		p := Principal{Name: kind + ":" + name, Method: "certificate", Expires: cert.NotAfter}
		if kind == "app" {
			p.Roles = []string{"app"}
		}
		return p, nil
	}
	cn := cert.Subject.CommonName
	if trustDomain != "" && !ids.AllowCN {
		return Principal{}, fmt.Errorf("%w: the certificate has no SPIFFE ID in trust domain %s (common name %q is not accepted as an identity with a trust domain; graftd --allow-cn-identities would accept it)", ErrUntrustedCert, trustDomain, cn)
	}
	kind, name, ok := strings.Cut(cn, ":")
	if !ok || kind == "" || !validName(name) || cn == RootPrincipal {
		return Principal{}, fmt.Errorf("%w: no SPIFFE ID and common name %q is not <kind>:<name>", ErrUntrustedCert, cn)
	}
	return Principal{Name: cn, Method: "certificate", Expires: cert.NotAfter}, nil
}

// validName reports whether a principal's name is one path segment, so
// that it can fill a {name} template safely.
func validName(name string) bool {
	if strings.Contains(name, "/") {
		return false
	}
	_, err := store.ParsePath("/" + name)
	return err == nil
}
