package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/graft-sh/graft/internal/tlsfiles"
)

// NewBackendTLS returns the TLS configuration of a connection to the
// database at backend (host:port) for mode: none for TLSDisable; for
// TLSRequire, TLS without verifying the certificate; for TLSVerifyCA, the
// certificate must chain to caFile's CAs (the system's when empty); for
// TLSVerifyFull, it must also be for serverName (default: backend's
// host).
func NewBackendTLS(mode, backend, caFile, serverName string) (*tls.Config, error) {
	if mode == TLSDisable {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(backend)
	if err != nil {
		return nil, fmt.Errorf("backend address %q: want host:port", backend)
	}
	if serverName == "" {
		serverName = host
	}
	var roots *x509.CertPool
	if caFile != "" {
		if roots, err = tlsfiles.CertPool(caFile); err != nil {
			return nil, err
		}
	}
	switch mode {
	case TLSRequire:
		return &tls.Config{ServerName: serverName, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, nil
	case TLSVerifyFull:
		return &tls.Config{ServerName: serverName, RootCAs: roots, MinVersion: tls.VersionTLS12}, nil
	case TLSVerifyCA:
		return &tls.Config{ServerName: serverName, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				return verifyChain(raw, roots)
			}}, nil
	}
	return nil, fmt.Errorf("tls mode %q: want disable, require, verify-ca or verify-full", mode)
}

// verifyChain checks that the peer's certificate chains to roots (the
// system's when nil), whatever name it is for.
func verifyChain(raw [][]byte, roots *x509.CertPool) error {
	if len(raw) == 0 {
		return errors.New("the database presented no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("the database's certificate: %w", err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	return err
}
