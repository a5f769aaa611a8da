package store

// ProcessIdentity and ElectionKey, for the tests of package store_test.
var ProcessIdentity = processIdentity

func (s *Store) ElectionKey(e Election) string { return s.electionKey(e) }
