// A Go producer or consumer of etcdkit's queue interop tests (tests/test_queue.py): etcd 3.4's
// contrib/recipes Queue.
//
//	queue ENDPOINTS NAME put VALUE...   enqueues each value in order, then prints "done"
//	queue ENDPOINTS NAME get N          prints "ready", then dequeues N items (waiting for
//	                                    them), printing each value on a line of its own
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: queue ENDPOINTS NAME put VALUE... | get N")
		os.Exit(2)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(os.Args[1], ","),
		DialTimeout: 5 * time.Second,
	})
	check(err)
	defer cli.Close()
	q := recipe.NewQueue(cli, os.Args[2])
	switch os.Args[3] {
	case "put":
		for _, v := range os.Args[4:] {
			check(q.Enqueue(v))
		}
		fmt.Println("done")
	case "get":
		n, err := strconv.Atoi(os.Args[4])
		check(err)
		fmt.Println("ready")
		for i := 0; i < n; i++ {
			v, err := q.Dequeue()
			check(err)
			fmt.Println(v)
		}
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
