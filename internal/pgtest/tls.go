package pgtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// RequireTLS gives the server a certificate for its host (127.0.0.1),
// self-signed, and makes it refuse every connection without TLS. It
// returns the certificate's file, which is its own CA, and its key's
// (the key is the server user's, 0600). URL, Connect and Exec use TLS
// from then on; DSN stays as it was.
func (s *Server) RequireTLS(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pgtest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP(s.Host)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(s.Dir, "server.crt"), filepath.Join(s.Dir, "server.key")
	writeServerFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeServerFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))

	hba := filepath.Join(s.Dir, "data", "pg_hba.conf")
	rules, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, append([]byte("hostnossl all all all reject\n"), rules...), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Exec(t, "postgres", "ALTER SYSTEM SET ssl_cert_file = "+Literal(certFile))
	s.Exec(t, "postgres", "ALTER SYSTEM SET ssl_key_file = "+Literal(keyFile))
	s.Exec(t, "postgres", "ALTER SYSTEM SET ssl = on")
	s.Exec(t, "postgres", "SELECT pg_reload_conf()")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		conn, err := pgx.Connect(ctx, s.DSN)
		if err == nil {
			conn.Close(ctx)
		}
		cancel()
		if err != nil && strings.Contains(err.Error(), "no encryption") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pgtest: the server still takes connections without TLS after 10 s")
		}
	}
	s.tls.Store(true)
	return certFile, keyFile
}

// writeServerFile writes a file the server reads: owned by the user it
// runs as, private (PostgreSQL refuses a key others may read).
func writeServerFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		return
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(name, uid, gid); err != nil {
		t.Fatal(err)
	}
}
