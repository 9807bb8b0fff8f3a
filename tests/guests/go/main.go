// A Go program on Kiln: goroutines, channels, sync.WaitGroup, time.Sleep, maps, GOMAXPROCS(2), os.ReadFile, a nil
// pointer write and a field read through a nil pointer that the runtime's SIGSEGV handler turns into recovered
// panics, and a net/http server and client
// talking over 127.0.0.1, built with CGO_ENABLED=0. Prints a summary and exits 0 when every result is right.
//
// With arguments it is an HTTP program for the HTTP tests and benchmark instead (see http.go):
//
//	hello serve [PORT]  serves the test routes on 0.0.0.0:PORT (default 8080)
//	hello get URL       fetches URL and prints "status N bytes N fnv1a HASH"
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		os.Exit(httpMode(os.Args[1:]))
	}
	runtime.GOMAXPROCS(2)
	var wg sync.WaitGroup
	results := make(chan int, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i%10 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			results <- i * i
		}(i)
	}
	wg.Wait()
	close(results)
	sum := 0
	for r := range results {
		sum += r
	}
	m := map[string]int{}
	for i := 0; i < 10000; i++ {
		m[fmt.Sprintf("k%d", i%100)] += i
	}
	start := time.Now()
	time.Sleep(20 * time.Millisecond)
	slept := time.Since(start) >= 20*time.Millisecond
	data, err := os.ReadFile("/etc/hosts")
	fmt.Printf("go: sum=%d keys=%d slept=%v hosts=%v err=%v\n", sum, len(m), slept, len(data) > 0, err)
	recovered := nilWrite()
	fmt.Printf("go: recovered %q\n", recovered)
	value, readPanic := nilFieldRead()
	fmt.Printf("go: nil field read gave %d, recovered %q\n", value, readPanic)
	body, err := httpLoopback()
	fmt.Printf("go: http %q err=%v\n", body, err)
	if sum != 328350 || len(m) != 100 || !slept || err != nil || recovered == "" || readPanic == "" {
		os.Exit(1)
	}
}

// httpLoopback serves HTTP on a port of 127.0.0.1 and fetches a page from itself: 20 requests on one client.
func httpLoopback() (string, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer listener.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.URL.Query().Get("n"))
	})
	go http.Serve(listener, mux)
	url := fmt.Sprintf("http://%s/hello", listener.Addr())
	var body []byte
	for i := 0; i < 20; i++ {
		resp, err := http.Get(fmt.Sprintf("%s?n=%d", url, i))
		if err != nil {
			return "", err
		}
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return "", err
		}
	}
	return string(body), nil
}

var target *int

type record struct {
	pad   int64
	value int64
}

var nilRecord *record

// nilFieldRead reads a field 8 bytes into a nil struct pointer: Go compiles no check for small offsets and relies on
// the fault, which must become a recoverable panic (on Kiln page 0 once held the syscall trampoline, so the read
// returned its bytes instead).
func nilFieldRead() (value int64, recovered string) {
	defer func() {
		if r := recover(); r != nil {
			recovered = fmt.Sprint(r)
		}
	}()
	return nilRecord.value, ""
}

// nilWrite writes through a nil pointer and returns the panic that the write became.
func nilWrite() (recovered string) {
	defer func() {
		if r := recover(); r != nil {
			recovered = fmt.Sprint(r)
		}
	}()
	*target = 1
	return ""
}
