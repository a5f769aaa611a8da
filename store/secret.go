package store

import (
	"fmt"

	"github.com/graft-sh/graft/keyring"
)

// SealSecret encrypts a secret that is not a value (the passwords of a
// rotation in progress, kept in its record) with the keyring's primary
// key. name is the additional data: it must be the same to open it, and
// it is prefixed so that no value's path can ever equal it.
func (s *Store) SealSecret(name string, plain []byte) ([]byte, error) {
	sealed, err := s.keyring.Load().Seal(secretAD(name), plain)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", name, err)
	}
	return sealed, nil
}

// OpenSecret decrypts what SealSecret sealed under name; its errors are
// the keyring's (ErrDecrypt).
func (s *Store) OpenSecret(name string, sealed []byte) ([]byte, error) {
	return s.keyring.Load().Open(secretAD(name), sealed)
}

// ResealSecret is sealed under the keyring's primary key: sealed itself
// and false when it already is, else opened and sealed again, and true.
// It is a re-encryption sweep's part for secrets kept outside values.
func (s *Store) ResealSecret(name string, sealed []byte) ([]byte, bool, error) {
	ring := s.keyring.Load()
	if id, err := keyring.KeyID(sealed); err == nil && id == ring.Primary() {
		return sealed, false, nil
	}
	plain, err := ring.Open(secretAD(name), sealed)
	if err != nil {
		return nil, false, fmt.Errorf("re-seal %s: %w", name, err)
	}
	resealed, err := ring.Seal(secretAD(name), plain)
	if err != nil {
		return nil, false, fmt.Errorf("re-seal %s: %w", name, err)
	}
	return resealed, true, nil
}

func secretAD(name string) string { return "graft:secret:" + name }
