package dbcred

import "errors"

// ErrNoUser says a dynamic credential's user does not exist: it was
// revoked already, or dropped by someone else. A lease whose renewal
// fails with it has nothing left to extend.
var ErrNoUser = errors.New("user does not exist")
