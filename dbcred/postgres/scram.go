package postgres

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
)

// scramIterations is PostgreSQL's default scram_iterations, and what
// `psql \password` uses.
const scramIterations = 4096

// newVerifier is the SCRAM-SHA-256 secret PostgreSQL stores for password,
// with a new random salt. Sent in place of the password, it keeps the
// password out of the statement, and so out of a server log that
// records statements (log_statement, log_min_error_statement).
func newVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	return scramVerifier(password, salt, scramIterations)
}

// scramVerifier is PostgreSQL's SCRAM-SHA-256 secret (RFC 5802 and 7677):
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, base64. The
// password is used as its bytes, which is what SASLprep makes of the
// printable ASCII that checkPassword lets through on the server and in
// pgx alike; other characters would need normalizing the same way on
// both sides.
func scramVerifier(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("salted password: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return "SCRAM-SHA-256$" + strconv.Itoa(iterations) + ":" + b64(salt) +
		"$" + b64(storedKey[:]) + ":" + b64(serverKey), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}
