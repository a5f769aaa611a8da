package broker

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// scramIterations is PostgreSQL's default for SCRAM-SHA-256 verifiers.
const scramIterations = 4096

// ClientPassword is the local password a listener asks its clients for,
// as defence in depth beside loopback: kept only as a SCRAM-SHA-256
// verifier, checked with the SCRAM exchange PostgreSQL itself uses, so a
// client's driver needs nothing new and the password never crosses the
// connection.
type ClientPassword struct {
	salt                 []byte
	storedKey, serverKey []byte
}

// NewClientPassword makes the verifier of password.
func NewClientPassword(password string) (*ClientPassword, error) {
	if password == "" {
		return nil, errors.New("the client password is empty")
	}
	salt := make([]byte, 16)
	rand.Read(salt)
	salted, err := pbkdf2.Key(sha256.New, password, salt, scramIterations, sha256.Size)
	if err != nil {
		return nil, err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	return &ClientPassword{salt: salt, storedKey: stored[:], serverKey: hmacSHA256(salted, "Server Key")}, nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// errClientPassword is a failed exchange; its text goes to the client.
var errClientPassword = errors.New("password authentication to the graft broker failed: the application's password must be the broker's client password (client_password_file in graft-agent's configuration)")

// authenticate runs SCRAM-SHA-256 with the client on be: it offers the
// mechanism, checks the client's proof against the verifier, and sends
// the server's signature. Channel binding is not offered (the client's
// TLS, if any, ends at the broker).
func (cp *ClientPassword) authenticate(be *pgproto3.Backend) error {
	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}})
	if err := be.Flush(); err != nil {
		return err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return err
	}
	msg, err := be.Receive()
	if err != nil {
		return err
	}
	first, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok || first.AuthMechanism != "SCRAM-SHA-256" {
		return errClientPassword
	}
	// client-first-message: gs2-header "n,," or "y,," (no binding), then
	// client-first-message-bare "n=<user>,r=<nonce>".
	data := string(first.Data)
	var gs2 string
	switch {
	case strings.HasPrefix(data, "n,,"), strings.HasPrefix(data, "y,,"):
		gs2 = data[:3]
	default:
		return errClientPassword
	}
	bare := data[3:]
	clientNonce := ""
	for _, attr := range strings.Split(bare, ",") {
		if v, ok := strings.CutPrefix(attr, "r="); ok {
			clientNonce = v
		}
	}
	if clientNonce == "" || len(clientNonce) > 256 {
		return errClientPassword
	}
	nonceBytes := make([]byte, 18)
	rand.Read(nonceBytes)
	nonce := clientNonce + base64.StdEncoding.EncodeToString(nonceBytes)
	serverFirst := "r=" + nonce + ",s=" + base64.StdEncoding.EncodeToString(cp.salt) + ",i=" + strconv.Itoa(scramIterations)
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
	if err := be.Flush(); err != nil {
		return err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return err
	}
	if msg, err = be.Receive(); err != nil {
		return err
	}
	final, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return errClientPassword
	}
	// client-final-message: "c=<b64 gs2 header>,r=<nonce>,p=<b64 proof>".
	withoutProof, proofB64, ok := strings.Cut(string(final.Data), ",p=")
	if !ok {
		return errClientPassword
	}
	if withoutProof != "c="+base64.StdEncoding.EncodeToString([]byte(gs2))+",r="+nonce {
		return errClientPassword
	}
	proof, err := base64.StdEncoding.DecodeString(proofB64)
	if err != nil || len(proof) != sha256.Size {
		return errClientPassword
	}
	authMessage := bare + "," + serverFirst + "," + withoutProof
	signature := hmacSHA256(cp.storedKey, authMessage)
	clientKey := make([]byte, sha256.Size)
	for i := range clientKey {
		clientKey[i] = proof[i] ^ signature[i]
	}
	got := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(got[:], cp.storedKey) != 1 {
		return errClientPassword
	}
	serverSignature := hmacSHA256(cp.serverKey, authMessage)
	be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=" + base64.StdEncoding.EncodeToString(serverSignature))})
	return nil
}
