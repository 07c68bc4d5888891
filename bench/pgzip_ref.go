// pgzip_ref gzips stdin to stdout the way LinuxKit writes its initrd: klauspost/pgzip's
// NewWriter at its default level and block settings. The benchmark uses the output size as
// the reference an initrd of ours must not exceed.
//
// Build offline from Debian's packaged sources (golang-go, golang-github-klauspost-pgzip-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o pgzip-ref bench/pgzip_ref.go
package main

import (
	"bufio"
	"io"
	"os"

	"github.com/klauspost/pgzip"
)

func main() {
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	gz := pgzip.NewWriter(out)
	if _, err := io.Copy(gz, bufio.NewReaderSize(os.Stdin, 1<<20)); err != nil {
		panic(err)
	}
	if err := gz.Close(); err != nil {
		panic(err)
	}
	if err := out.Flush(); err != nil {
		panic(err)
	}
}
