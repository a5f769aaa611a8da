package audit

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// fileSink appends JSON lines to a file and syncs them before a write
// returns. Concurrent writers share fsyncs: a writer whose line was already
// covered by another writer's sync returns without one of its own.
type fileSink struct {
	mu      sync.Mutex // serialises writes; guards written
	f       *os.File
	written uint64 // lines written

	syncMu sync.Mutex // serialises syncs; guards synced
	synced uint64     // lines known to be on disk
}

func openFileSink(path string, log *slog.Logger) (*fileSink, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	// Records name principals and paths; an existing file someone made
	// readable by others is tightened rather than trusted.
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return nil, err
		}
		log.Warn("audit file was readable by others; changed its mode to 0600", "file", path, "old_mode", perm.String())
	}
	return &fileSink{f: f}, nil
}

func (s *fileSink) write(line []byte) error {
	s.mu.Lock()
	_, err := s.f.Write(line)
	if err == nil {
		s.written++
	}
	mine := s.written
	s.mu.Unlock()
	if err != nil {
		return err
	}

	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.synced >= mine {
		return nil
	}
	s.mu.Lock()
	target := s.written
	s.mu.Unlock()
	if err := s.f.Sync(); err != nil {
		return err
	}
	s.synced = target
	return nil
}

func (s *fileSink) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.f.Sync(); err != nil {
		s.f.Close()
		return fmt.Errorf("sync audit file: %w", err)
	}
	return s.f.Close()
}
