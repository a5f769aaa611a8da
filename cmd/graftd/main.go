// Command graftd is the graft server. See `graftd --help`.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "graftd: %v\n", err)
		os.Exit(1)
	}
}
