// Package replicator copies values from their owners' trees into the trees
// of the applications that use them. It owns the replication rules (their
// records, validation and index), the relay that turns the store's change
// feed into JetStream events, the replicator that applies them, the
// reconciler that repairs what the event path missed, parked changes, and
// the guard that keeps a shared source from being deleted by accident.
package replicator
