// Package atomicfile writes files so that a reader sees either the old
// content or the new, never a torn mix, even across a crash.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces name with data: it writes a temporary file in the same
// directory with the given mode, fsyncs it, renames it over name and fsyncs
// the directory so the rename survives a crash.
func Write(name string, data []byte, perm os.FileMode) error {
	return WriteOwned(name, data, perm, -1, -1)
}

// WriteOwned is Write that also gives the file owner uid and group gid
// before it takes name's place (-1 leaves either as the writer's).
func WriteOwned(name string, data []byte, perm os.FileMode, uid, gid int) error {
	dir := filepath.Dir(name)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if uid >= 0 || gid >= 0 {
		if err := tmp.Chown(uid, gid); err != nil {
			tmp.Close()
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync dir: %w", name, err)
	}
	return nil
}
