package postgres

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

// The verifier's keys are the ones RFC 7677's example exchange proves:
// StoredKey checks the client's proof, ServerKey signs the server's
// final message.
func TestScramVerifierRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := scramVerifier("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	head, keys, ok := strings.Cut(v, "$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
	if !ok || head != "SCRAM-SHA-256" {
		t.Fatalf("verifier %q: want SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>", v)
	}
	stored64, server64, _ := strings.Cut(keys, ":")
	storedKey, _ := base64.StdEncoding.DecodeString(stored64)
	serverKey, _ := base64.StdEncoding.DecodeString(server64)

	const nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	authMessage := "n=user,r=rOprNGfwEbeRWgbNEkqO," +
		"r=" + nonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096," +
		"c=biws,r=" + nonce
	proof, _ := base64.StdEncoding.DecodeString("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
	clientKey := hmacSHA256(storedKey, authMessage) // the client signature, for now
	for i := range clientKey {
		clientKey[i] ^= proof[i]
	}
	if got := sha256.Sum256(clientKey); !hmac.Equal(got[:], storedKey) {
		t.Errorf("StoredKey %s does not verify the RFC's client proof", stored64)
	}
	if got := base64.StdEncoding.EncodeToString(hmacSHA256(serverKey, authMessage)); got != "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=" {
		t.Errorf("ServerKey signs the RFC's exchange as %s, want 6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", got)
	}
}

// Each verifier has its own salt, and holds only characters that need no
// quoting in an SQL literal.
func TestNewVerifier(t *testing.T) {
	a, err := newVerifier("pencil")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newVerifier("pencil")
	if a == b {
		t.Fatalf("two verifiers of one password are equal (%s): the salt is not random", a)
	}
	if strings.Trim(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=$:-") != "" {
		t.Fatalf("verifier %q has characters outside base64 and $ : -", a)
	}
}
