// Package keyring owns the keys that encrypt graft's values at rest: a
// versioned set of AES-256-GCM keys, the highest added being the primary
// one, kept in a JSON file (mode 0600, refused when others may read it).
// It seals a value with the path as additional data, so a ciphertext
// cannot be moved to another path or relabelled with another key. It knows
// nothing of etcd; the store seals and opens with it.
package keyring

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/graft-sh/graft/internal/atomicfile"
)

// ErrDecrypt marks a value that cannot be opened: its key is not in the
// keyring, or it was damaged or moved.
var ErrDecrypt = errors.New("cannot decrypt")

// Ciphertext layout: version byte, key id (uint32, big endian), 12-byte
// nonce, then the AES-256-GCM sealed value. The first five bytes and the
// path are the additional data, so a ciphertext cannot be moved to another
// path or relabelled with another key id.
const (
	cipherVersion = 1
	headerLen     = 1 + 4
	nonceLen      = 12
	keyLen        = 32
)

// Keyring holds the versioned AES-256-GCM keys that encrypt values at rest.
// New values are sealed with the primary key; any key in the ring opens.
// A Keyring is immutable; rotation produces a new one.
type Keyring struct {
	primary uint32
	aeads   map[uint32]cipher.AEAD
}

type keyringFile struct {
	Primary uint32        `json:"primary"`
	Keys    []keyringItem `json:"keys"`
}

type keyringItem struct {
	ID      uint32    `json:"id"`
	Created time.Time `json:"created"`
	Key     []byte    `json:"key"`
}

// New builds a keyring from raw 32-byte keys by id.
func New(primary uint32, keys map[uint32][]byte) (*Keyring, error) {
	k := &Keyring{primary: primary, aeads: make(map[uint32]cipher.AEAD, len(keys))}
	for id, raw := range keys {
		if id == 0 {
			return nil, fmt.Errorf("keyring: key id 0 is reserved; ids start at 1")
		}
		if len(raw) != keyLen {
			return nil, fmt.Errorf("keyring: key %d is %d bytes; AES-256 needs %d", id, len(raw), keyLen)
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, fmt.Errorf("keyring: key %d: %w", id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("keyring: key %d: %w", id, err)
		}
		k.aeads[id] = aead
	}
	if _, ok := k.aeads[primary]; !ok {
		return nil, fmt.Errorf("keyring: primary key %d is not in the ring", primary)
	}
	return k, nil
}

// Primary is the id of the key that seals new values.
func (k *Keyring) Primary() uint32 { return k.primary }

// IDs lists every key id in the ring, ascending.
func (k *Keyring) IDs() []uint32 {
	ids := make([]uint32, 0, len(k.aeads))
	for id := range k.aeads {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Seal encrypts a value for path with the primary key.
func (k *Keyring) Seal(path string, plaintext []byte) ([]byte, error) {
	aead := k.aeads[k.primary]
	out := make([]byte, headerLen+nonceLen, headerLen+nonceLen+len(plaintext)+aead.Overhead())
	out[0] = cipherVersion
	binary.BigEndian.PutUint32(out[1:headerLen], k.primary)
	if _, err := rand.Read(out[headerLen : headerLen+nonceLen]); err != nil {
		return nil, fmt.Errorf("seal %s: %w", path, err)
	}
	return aead.Seal(out, out[headerLen:headerLen+nonceLen], plaintext, additionalData(out[:headerLen], path)), nil
}

// Open decrypts a value sealed for path by any key in the ring.
func (k *Keyring) Open(path string, ciphertext []byte) ([]byte, error) {
	id, err := KeyID(ciphertext)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	aead, ok := k.aeads[id]
	if !ok {
		return nil, fmt.Errorf("open %s: %w: key %d is not in the keyring; load the keyring that holds it", path, ErrDecrypt, id)
	}
	if len(ciphertext) < headerLen+nonceLen+aead.Overhead() {
		return nil, fmt.Errorf("open %s: %w: ciphertext truncated", path, ErrDecrypt)
	}
	nonce := ciphertext[headerLen : headerLen+nonceLen]
	plain, err := aead.Open(nil, nonce, ciphertext[headerLen+nonceLen:], additionalData(ciphertext[:headerLen], path))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w: authentication failed", path, ErrDecrypt)
	}
	return plain, nil
}

// KeyID returns the id of the key that sealed a ciphertext.
func KeyID(ciphertext []byte) (uint32, error) {
	if len(ciphertext) < headerLen || ciphertext[0] != cipherVersion {
		return 0, fmt.Errorf("%w: unknown ciphertext format", ErrDecrypt)
	}
	return binary.BigEndian.Uint32(ciphertext[1:headerLen]), nil
}

func additionalData(header []byte, path string) []byte {
	ad := make([]byte, 0, len(header)+len(path))
	ad = append(ad, header...)
	return append(ad, path...)
}

// Load reads a keyring file. The file must not be readable by group
// or others.
func Load(path string) (*Keyring, error) {
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load keyring: %s does not exist; create one with `graftd keyring init --keyring-file %s`", path, path)
	}
	if err != nil {
		return nil, fmt.Errorf("load keyring: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load keyring: %s has mode %#o; it holds encryption keys, run `chmod 600 %s`", path, info.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load keyring: %w", err)
	}
	var f keyringFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("load keyring %s: not a graft keyring: %w", path, err)
	}
	if len(f.Keys) == 0 {
		return nil, fmt.Errorf("load keyring %s: no keys", path)
	}
	keys := make(map[uint32][]byte, len(f.Keys))
	for _, item := range f.Keys {
		if _, dup := keys[item.ID]; dup {
			return nil, fmt.Errorf("load keyring %s: key id %d appears twice", path, item.ID)
		}
		keys[item.ID] = item.Key
	}
	k, err := New(f.Primary, keys)
	if err != nil {
		return nil, fmt.Errorf("load keyring %s: %w", path, err)
	}
	return k, nil
}

// CreateFile writes a new keyring with one random key. It refuses to
// overwrite an existing file, which would make stored values unreadable.
func CreateFile(path string) error {
	f := keyringFile{}
	if err := f.add(); err != nil {
		return err
	}
	data, err := f.marshal()
	if err != nil {
		return err
	}
	// A stat-then-rename would let two concurrent inits both succeed, the
	// second replacing keys the first may already be encrypting with. The
	// complete file is written aside and linked into place: link fails if
	// the name exists, so the check and the creation are one step, and a
	// reader never sees a partial keyring.
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create keyring: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := writeSynced(tmp, data); err != nil {
		return fmt.Errorf("create keyring: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create keyring: %s already exists; refusing to overwrite keys that encrypt stored values", path)
		}
		return fmt.Errorf("create keyring: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("create keyring: %w", err)
	}
	return nil
}

func writeSynced(f *os.File, data []byte) error {
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// RotateFile adds a new random key to a keyring file and makes it
// the primary. Old keys stay, so values sealed with them still open. It
// returns the new key id.
func RotateFile(path string) (uint32, error) {
	if _, err := Load(path); err != nil {
		return 0, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("rotate keyring: %w", err)
	}
	var f keyringFile
	if err := json.Unmarshal(data, &f); err != nil {
		return 0, fmt.Errorf("rotate keyring: %w", err)
	}
	if err := f.add(); err != nil {
		return 0, err
	}
	return f.Primary, f.write(path)
}

func (f *keyringFile) add() error {
	var id uint32 = 1
	for _, item := range f.Keys {
		if item.ID >= id {
			id = item.ID + 1
		}
	}
	key := make([]byte, keyLen)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	f.Keys = append(f.Keys, keyringItem{ID: id, Created: time.Now().UTC(), Key: key})
	f.Primary = id
	return nil
}

func (f *keyringFile) marshal() ([]byte, error) {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode keyring: %w", err)
	}
	return append(data, '\n'), nil
}

func (f *keyringFile) write(path string) error {
	data, err := f.marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("write keyring: %w", err)
	}
	return nil
}
