// Package acl owns who a caller is and what it may do. It keeps the token
// records (hashed: a token is shown once, when it is created, and never
// kept) and turns bearer tokens and client certificates into principals;
// it keeps the policies (YAML, one per role, the default ones included)
// and decides, through casbin, whether a principal may do an action on a
// path. Both kinds of record live in the store as typed records, and each
// replica follows them through a watch-fed snapshot.
package acl
