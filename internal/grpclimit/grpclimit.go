// Package grpclimit holds the gRPC message sizes graftd and its Go clients
// agree on, written once so that the two sides cannot drift apart.
package grpclimit

const (
	// MaxResponseBytes bounds one response: a listing of many wide rules.
	// graftd sends no more and the SDK receives no more.
	MaxResponseBytes = 64 << 20
	// MaxRequestBytes bounds one request: room for a rule with a hundred
	// thousand destinations (about 5 MB). The SDK sends no more; graftd
	// accepts that much by default for its large rpcs (Share, PutTree) and
	// half of it for the rest.
	MaxRequestBytes = 8 << 20
)
