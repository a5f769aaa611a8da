package keyring_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/graft-sh/graft/keyring"
)

func TestKeyringSealOpen(t *testing.T) {
	ring := newRing(t, 1, 1)
	values := map[string][]byte{
		"empty":  {},
		"text":   []byte("s3cret value"),
		"binary": allBytes(),
		"large":  bytes.Repeat([]byte{0xa5}, 64<<10),
	}
	for name, want := range values {
		t.Run(name, func(t *testing.T) {
			sealed, err := ring.Seal("/app/key", want)
			if err != nil {
				t.Fatal(err)
			}
			if len(want) > 8 && bytes.Contains(sealed, want[:8]) {
				t.Errorf("ciphertext contains the plaintext")
			}
			if id, err := keyring.KeyID(sealed); err != nil || id != 1 {
				t.Errorf("KeyID = %d, %v; want 1, nil", id, err)
			}
			got, err := ring.Open("/app/key", sealed)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Open = %d bytes, want the %d bytes sealed", len(got), len(want))
			}
		})
	}
}

func TestKeyringSealIsRandomized(t *testing.T) {
	ring := newRing(t, 1, 1)
	a, _ := ring.Seal("/p", []byte("same"))
	b, _ := ring.Seal("/p", []byte("same"))
	if bytes.Equal(a, b) {
		t.Fatal("sealing the same value twice gave the same ciphertext; nonces are not random")
	}
}

func TestKeyringOpenFailures(t *testing.T) {
	ring := newRing(t, 1, 1)
	sealed, err := ring.Seal("/app/key", []byte("some value"))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		c := bytes.Clone(sealed)
		c[i] ^= 0x01
		return c
	}
	tests := []struct {
		name       string
		path       string
		ciphertext []byte
		wantMsg    string
	}{
		{"other path", "/app/other", sealed, "authentication failed"},
		{"path prefix", "/app/ke", sealed, "authentication failed"},
		{"version byte", "/app/key", flip(0), "unknown ciphertext format"},
		{"key id", "/app/key", flip(4), "key 0 is not in the keyring"},
		{"nonce", "/app/key", flip(5), "authentication failed"},
		{"body", "/app/key", flip(17), "authentication failed"},
		{"tag", "/app/key", flip(len(sealed) - 1), "authentication failed"},
		{"truncated", "/app/key", sealed[:20], "truncated"},
		{"header only", "/app/key", sealed[:5], "truncated"},
		{"empty", "/app/key", nil, "unknown ciphertext format"},
		{"appended byte", "/app/key", append(bytes.Clone(sealed), 0), "authentication failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ring.Open(tc.path, tc.ciphertext)
			if !errors.Is(err, keyring.ErrDecrypt) {
				t.Fatalf("Open = %q, %v; want ErrDecrypt", got, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
		})
	}
}

func TestKeyringUnknownKeyID(t *testing.T) {
	sealed, err := newRing(t, 1, 1).Seal("/app/key", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = newRing(t, 2, 2).Open("/app/key", sealed)
	if !errors.Is(err, keyring.ErrDecrypt) {
		t.Fatalf("Open with a ring lacking key 1 = %v, want ErrDecrypt", err)
	}
	for _, want := range []string{"/app/key", "key 1 is not in the keyring", "load the keyring that holds it"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestNewKeyringRejects(t *testing.T) {
	key := randomKey(t)
	tests := []struct {
		name    string
		primary uint32
		keys    map[uint32][]byte
		wantMsg string
	}{
		{"id 0", 0, map[uint32][]byte{0: key}, "key id 0 is reserved"},
		{"short key", 1, map[uint32][]byte{1: key[:16]}, "key 1 is 16 bytes; AES-256 needs 32"},
		{"long key", 1, map[uint32][]byte{1: append(bytes.Clone(key), 0)}, "key 1 is 33 bytes"},
		{"primary missing", 2, map[uint32][]byte{1: key}, "primary key 2 is not in the ring"},
		{"no keys", 1, nil, "primary key 1 is not in the ring"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := keyring.New(tc.primary, tc.keys)
			if err == nil {
				t.Fatalf("NewKeyring = %v, nil; want an error", k)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
		})
	}
}

func TestKeyringIDs(t *testing.T) {
	k, err := keyring.New(2, map[uint32][]byte{3: randomKey(t), 1: randomKey(t), 2: randomKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.IDs(), []uint32{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("IDs = %v, want %v", got, want)
	}
	if got := k.Primary(); got != 2 {
		t.Errorf("Primary = %d, want 2", got)
	}
}

func TestCreateKeyringFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring.json")
	if err := keyring.CreateFile(path); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o600 {
		t.Errorf("keyring file mode = %#o, want 0600", got)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keyring.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ring.IDs(), []uint32{1}; !slices.Equal(got, want) || ring.Primary() != 1 {
		t.Errorf("new keyring IDs = %v primary %d, want [1] primary 1", got, ring.Primary())
	}

	err = keyring.CreateFile(path)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second CreateKeyringFile = %v, want an 'already exists' error", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("CreateKeyringFile overwrote an existing keyring")
	}
}

// Two `graftd keyring init` runs racing must not both succeed: the loser
// would have replaced the keys the winner may already be encrypting with.
func TestCreateKeyringFileConcurrent(t *testing.T) {
	for range 5 {
		path := filepath.Join(t.TempDir(), "keyring.json")
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() { errs[i] = keyring.CreateFile(path) })
		}
		wg.Wait()
		succeeded := 0
		for _, err := range errs {
			if err == nil {
				succeeded++
			} else if !strings.Contains(err.Error(), "already exists") {
				t.Errorf("CreateKeyringFile = %v, want nil or 'already exists'", err)
			}
		}
		if succeeded != 1 {
			t.Fatalf("%d of %d concurrent CreateKeyringFile calls succeeded, want exactly 1", succeeded, n)
		}
		if _, err := keyring.Load(path); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(filepath.Dir(path))
		if len(entries) != 1 {
			t.Errorf("directory holds %d files after create, want only the keyring", len(entries))
		}
	}
}

func TestLoadKeyringRejects(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	if err := keyring.CreateFile(good); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, content []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // WriteFile's mode is subject to umask
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		wantMsg []string
	}{
		{"world readable", write("world.json", data, 0o644), []string{"mode 0644", "chmod 600"}},
		{"group readable", write("group.json", data, 0o640), []string{"mode 0640", "chmod 600"}},
		{"other writable", write("other.json", data, 0o602), []string{"chmod 600"}},
		{"missing", filepath.Join(dir, "missing.json"), []string{"does not exist", "graftd keyring init"}},
		{"not json", write("garbage.json", []byte("nope"), 0o600), []string{"not a graft keyring"}},
		{"no keys", write("empty.json", []byte(`{"primary":1,"keys":[]}`), 0o600), []string{"no keys"}},
		{"duplicate id", write("dup.json", []byte(`{"primary":1,"keys":[{"id":1,"key":"`+b64(randomKey(t))+`"},{"id":1,"key":"`+b64(randomKey(t))+`"}]}`), 0o600), []string{"key id 1 appears twice"}},
		{"bad primary", write("primary.json", []byte(`{"primary":7,"keys":[{"id":1,"key":"`+b64(randomKey(t))+`"}]}`), 0o600), []string{"primary key 7"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := keyring.Load(tc.path)
			if err == nil {
				t.Fatalf("LoadKeyring = %v, nil; want an error", k)
			}
			for _, want := range tc.wantMsg {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

func TestRotateKeyringFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring.json")
	if err := keyring.CreateFile(path); err != nil {
		t.Fatal(err)
	}
	ring1, err := keyring.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sealed1, err := ring1.Seal("/app/key", []byte("under key 1"))
	if err != nil {
		t.Fatal(err)
	}

	id, err := keyring.RotateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if id != 2 {
		t.Errorf("RotateKeyringFile = %d, want 2", id)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o600 {
		t.Errorf("rotated keyring mode = %#o, want 0600", got)
	}
	ring2, err := keyring.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ring2.IDs(), []uint32{1, 2}; !slices.Equal(got, want) {
		t.Errorf("IDs after rotation = %v, want %v", got, want)
	}
	if ring2.Primary() != 2 {
		t.Errorf("Primary after rotation = %d, want 2", ring2.Primary())
	}
	if got, err := ring2.Open("/app/key", sealed1); err != nil || string(got) != "under key 1" {
		t.Errorf("opening a key-1 value after rotation = %q, %v", got, err)
	}
	sealed2, err := ring2.Seal("/app/key", []byte("under key 2"))
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := keyring.KeyID(sealed2); id != 2 {
		t.Errorf("new values sealed with key %d, want 2", id)
	}
	if _, err := ring1.Open("/app/key", sealed2); !errors.Is(err, keyring.ErrDecrypt) {
		t.Errorf("the old ring opened a key-2 value: %v", err)
	}

	if id, err := keyring.RotateFile(path); err != nil || id != 3 {
		t.Errorf("second rotation = %d, %v; want 3, nil", id, err)
	}
}

func TestRotateKeyringFileRefusesOpenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring.json")
	if err := keyring.CreateFile(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := keyring.RotateFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("RotateKeyringFile on a 0644 file = %v, want a chmod 600 error", err)
	}
}

func newRing(t testing.TB, primary uint32, ids ...uint32) *keyring.Keyring {
	t.Helper()
	keys := map[uint32][]byte{}
	for _, id := range ids {
		keys[id] = randomKey(t)
	}
	k, err := keyring.New(primary, keys)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randomKey(t testing.TB) []byte {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return key
}

func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
