// A Go participant of etcdkit's read-write lock interop tests (tests/test_rwlock.py): etcd 3.4's
// contrib/recipes RWMutex, driven over stdin/stdout.
//
//	rwlock ENDPOINTS NAME read|write
//
// It takes the lock in the given mode, prints "held", waits for a line on stdin, releases the
// lock, prints "released" and exits.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: rwlock ENDPOINTS NAME read|write")
		os.Exit(2)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(os.Args[1], ","),
		DialTimeout: 5 * time.Second,
	})
	check(err)
	defer cli.Close()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	check(err)
	defer s.Close()
	rw := recipe.NewRWMutex(s, os.Args[2])
	fmt.Println("waiting")
	if os.Args[3] == "read" {
		check(rw.RLock())
	} else {
		check(rw.Lock())
	}
	fmt.Println("held")
	bufio.NewReader(os.Stdin).ReadString('\n')
	if os.Args[3] == "read" {
		check(rw.RUnlock())
	} else {
		check(rw.Unlock())
	}
	fmt.Println("released")
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
