// goalloc: a heap-heavy Go program for bench/memory.sh. Allocates 1 GiB in 64-byte objects (16 Mi of them, each
// pointing to the one before, so that all stay alive and the collector has them to trace), walks the list, and
// prints how many it found and how long the allocation took. Built with CGO_ENABLED=0 (static), run natively and in
// Kiln.
package main

import (
	"fmt"
	"os"
	"time"
)

type node struct {
	next *node
	pad  [7]uint64
}

func main() {
	const count = 1 << 24 // 16 Mi objects of 64 bytes: 1 GiB
	start := time.Now()
	var head *node
	for i := 0; i < count; i++ {
		n := &node{next: head}
		n.pad[0] = uint64(i)
		head = n
	}
	took := time.Since(start)
	found := 0
	for n := head; n != nil; n = n.next {
		if n.pad[0] != uint64(count-1-found) {
			fmt.Println("goalloc: wrong object at", found)
			os.Exit(1)
		}
		found++
	}
	fmt.Printf("goalloc: %d objects, %d MiB, allocated in %d ms\n", found, found*64>>20, took.Milliseconds())
}
