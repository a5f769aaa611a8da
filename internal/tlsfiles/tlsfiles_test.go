package tlsfiles_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graft-sh/graft/internal/tlsfiles"
)

// writePair writes a self-signed CA certificate and its key as PEM files.
func writePair(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestCertPoolErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{filepath.Join(dir, "missing.pem"), "read CA file: open " + filepath.Join(dir, "missing.pem")},
		{empty, "CA file " + empty + " holds no PEM certificate"},
	} {
		if _, err := tlsfiles.CertPool(tc.file); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("CertPool(%s) = %v, want %q", tc.file, err, tc.want)
		}
	}
}

func TestClientAndServer(t *testing.T) {
	cert, key := writePair(t, t.TempDir())

	if tc, err := tlsfiles.Client("", "", ""); tc != nil || err != nil {
		t.Errorf("Client with no files = %v, %v; want nil, nil", tc, err)
	}
	tc, err := tlsfiles.Client(cert, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.MinVersion != tls.VersionTLS12 {
		t.Errorf("Client = roots %v, %d certificates, min version %x", tc.RootCAs, len(tc.Certificates), tc.MinVersion)
	}

	tc, err = tlsfiles.Server(cert, key, "")
	if err != nil {
		t.Fatal(err)
	}
	if tc.ClientCAs != nil || tc.ClientAuth != tls.NoClientCert {
		t.Errorf("Server without a client CA verifies clients: %v %v", tc.ClientCAs, tc.ClientAuth)
	}
	tc, err = tlsfiles.Server(cert, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	if tc.ClientCAs == nil || tc.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Errorf("Server with a client CA: %v %v, want its pool and VerifyClientCertIfGiven", tc.ClientCAs, tc.ClientAuth)
	}
	if _, err := tlsfiles.Server(cert, filepath.Join(t.TempDir(), "none"), ""); err == nil {
		t.Error("Server with a missing key file succeeded")
	}
}
