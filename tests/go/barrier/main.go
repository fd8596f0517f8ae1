// A Go participant of etcdkit's barrier interop tests (tests/test_barrier.py): etcd 3.4's
// contrib/recipes Barrier.
//
//	barrier ENDPOINTS NAME hold|release|wait
//
// hold and release act and print "done"; wait prints "waiting", returns from Barrier.Wait and
// prints "released".
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: barrier ENDPOINTS NAME hold|release|wait")
		os.Exit(2)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(os.Args[1], ","),
		DialTimeout: 5 * time.Second,
	})
	check(err)
	defer cli.Close()
	b := recipe.NewBarrier(cli, os.Args[2])
	switch os.Args[3] {
	case "hold":
		check(b.Hold())
		fmt.Println("done")
	case "release":
		check(b.Release())
		fmt.Println("done")
	case "wait":
		fmt.Println("waiting")
		check(b.Wait())
		fmt.Println("released")
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[3])
		os.Exit(2)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
