package sdk

import (
	"context"

	"google.golang.org/grpc/connectivity"
)

// Reconnects delivers a value each time the connection to graftd is made
// again after it was lost (not when it is first made), until ctx ends or
// the client is closed. What graftd keeps only while a connection is open
// (a graft-agent's report) is sent again then.
func (c *Client) Reconnects(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		connected, lost := false, false
		for {
			state := c.conn.GetState()
			switch {
			case state == connectivity.Shutdown:
				return
			case state == connectivity.Ready:
				if lost {
					select {
					case out <- struct{}{}:
					default: // one waiting is enough
					}
				}
				connected, lost = true, false
			case connected:
				lost = true
			}
			if !c.conn.WaitForStateChange(ctx, state) {
				return
			}
		}
	}()
	return out
}
