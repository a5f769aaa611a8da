package store_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/graft-sh/graft/internal/embedded"
	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

// No value written through the store reaches etcd's files in the clear:
// not the current one, not one moved to history by an overwrite or a
// delete, not one written again by a restore. The scan is shown to work by
// finding a path (stored in the clear by design) and a value written to
// etcd directly.
func TestValuesEncryptedAtRest(t *testing.T) {
	ctx := t.Context()
	// etcd is started here rather than by testenv.Start because the test
	// must stop it before its cleanup does, and Close may run only once.
	dir := t.TempDir()
	etcd, err := embedded.StartEtcd(ctx, embedded.EtcdConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(etcd.Close) }
	t.Cleanup(stop)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var closeOnce sync.Once
	closeClient := func() { closeOnce.Do(func() { cli.Close() }) }
	t.Cleanup(closeClient)
	s, err := store.New(store.Config{Client: cli, Keyring: testenv.NewKeyring(t), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}

	secrets := map[string][]byte{} // name -> the whole value written
	secret := func(name string) []byte {
		v := []byte("graft-secret-" + name + "-" + randomHex(t))
		secrets[name] = v
		return v
	}
	write := func(path string, value []byte) store.Entry {
		t.Helper()
		e, err := s.Put(ctx, path, value, store.WriteOptions{Author: "tester"})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}

	first := write("/enc/overwritten", secret("overwritten-1"))
	write("/enc/overwritten", secret("overwritten-2"))
	write("/enc/deleted", secret("deleted"))
	if _, err := s.Delete(ctx, "/enc/deleted", store.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Restore(ctx, "/enc/overwritten", first.Revision, "tester"); err != nil {
		t.Fatal(err)
	}
	binary := append(allBytes(), secret("binary-marker")...)
	binary = append(binary, allBytes()...)
	write("/enc/binary", binary)
	secrets["binary"] = binary
	big := append(secret("big"), bytes.Repeat([]byte("padding "), 16<<10)...)
	write("/enc/big", big)
	secrets["big-whole"] = big

	clearPath := "/enc/clear-path-" + randomHex(t)
	write(clearPath, []byte("x"))
	control := []byte("graft-control-" + randomHex(t))
	if _, err := cli.Put(ctx, "/not-graft/control", string(control)); err != nil {
		t.Fatal(err)
	}

	closeClient()
	stop()

	files := readTree(t, dir)
	contains := func(needle []byte) []string {
		var where []string
		for name, data := range files {
			if bytes.Contains(data, needle) {
				where = append(where, name)
			}
		}
		return where
	}
	if where := contains([]byte(clearPath)); len(where) == 0 {
		t.Fatalf("the scan of %d files did not find the path %s, which etcd stores in the clear: it proves nothing", len(files), clearPath)
	}
	if where := contains(control); len(where) == 0 {
		t.Fatalf("the scan did not find a value written to etcd directly: it proves nothing")
	}
	for name, value := range secrets {
		for _, needle := range [][]byte{value, []byte(base64.StdEncoding.EncodeToString(value))} {
			if where := contains(needle); len(where) > 0 {
				t.Errorf("value %s found in the clear in %v", name, where)
			}
		}
	}
}

// readTree returns the contents of every regular file under dir.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		files[rel] = data
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func randomHex(t testing.TB) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// allBytes is every byte value once.
func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}
