// The HTTP modes of the Go guest: a net/http server with the routes every HTTP test server has (GET / says hello,
// GET /bytes/N streams N pattern bytes, POST /sum answers "LEN HASH" of the body it streamed), and a client that
// fetches one URL and reports what came back.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
)

const hello = "hello from kiln\n"

func httpMode(args []string) int {
	switch {
	case args[0] == "serve" && len(args) <= 2:
		port := "8080"
		if len(args) == 2 {
			port = args[1]
		}
		return serve(port)
	case args[0] == "get" && len(args) == 2:
		return get(args[1])
	}
	fmt.Fprintln(os.Stderr, "usage: hello [serve [PORT] | get URL]")
	return 2
}

// fnv1a is the 64-bit FNV-1a hash as an io.Writer, so that bodies stream through it.
type fnv1a struct {
	hash uint64
	len  int64
}

func newFnv1a() *fnv1a { return &fnv1a{hash: 0xcbf29ce484222325} }

func (f *fnv1a) Write(p []byte) (int, error) {
	for _, b := range p {
		f.hash = (f.hash ^ uint64(b)) * 0x100000001b3
	}
	f.len += int64(len(p))
	return len(p), nil
}

// patternReader generates byte i = (i*7 + i/251) mod 256 as it is read, up to len bytes.
type patternReader struct{ at, len int64 }

func (p *patternReader) Read(buf []byte) (int, error) {
	if p.at == p.len {
		return 0, io.EOF
	}
	n := int64(len(buf))
	if rest := p.len - p.at; rest < n {
		n = rest
	}
	for k := int64(0); k < n; k++ {
		i := p.at + k
		buf[k] = byte(i*7 + i/251)
	}
	p.at += n
	return int(n), nil
}

func serve(port string) int {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, hello)
	})
	mux.HandleFunc("/bytes/", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/bytes/"), 10, 64)
		if err != nil || n < 0 || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, &patternReader{len: n})
	})
	mux.HandleFunc("/sum", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		h := newFnv1a()
		if _, err := io.Copy(h, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %016x\n", h.len, h.hash)
	})
	fmt.Printf("listening on %s\n", port)
	err := http.ListenAndServe("0.0.0.0:"+port, mux)
	fmt.Fprintf(os.Stderr, "serve: %v\n", err)
	return 1
}

func get(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "get: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	h := newFnv1a()
	if _, err := io.Copy(h, resp.Body); err != nil {
		fmt.Fprintf(os.Stderr, "get: reading the body: %v\n", err)
		return 1
	}
	fmt.Printf("status %d bytes %d fnv1a %016x\n", resp.StatusCode, h.len, h.hash)
	return 0
}
