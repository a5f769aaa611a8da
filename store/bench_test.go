package store_test

import (
	"fmt"
	"testing"

	"github.com/graft-sh/graft/internal/testenv"
	"github.com/graft-sh/graft/store"
)

func BenchmarkPut(b *testing.B) {
	env := testenv.Start(b)
	value := make([]byte, 1<<10)
	b.SetBytes(int64(len(value)))
	i := 0
	for b.Loop() {
		// A few paths, so that history trimming is part of the cost.
		if _, err := env.Store.Put(b.Context(), fmt.Sprintf("/bench/k%d", i%8), value, store.WriteOptions{Author: "bench"}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkGet(b *testing.B) {
	env := testenv.Start(b)
	value := make([]byte, 1<<10)
	b.SetBytes(int64(len(value)))
	put(b, env.Store, "/bench/k", string(value))
	for b.Loop() {
		if _, err := env.Store.Get(b.Context(), "/bench/k"); err != nil {
			b.Fatal(err)
		}
	}
}
