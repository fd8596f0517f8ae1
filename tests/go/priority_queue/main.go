// A Go producer or consumer of etcdkit's priority queue interop tests (tests/test_queue.py):
// etcd 3.4's contrib/recipes PriorityQueue.
//
//	priority_queue ENDPOINTS NAME put VALUE:PRIORITY...   enqueues each in order, prints "done"
//	priority_queue ENDPOINTS NAME get N                   prints "ready", then dequeues N items
//	                                                      (waiting for them), one value a line
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
		fmt.Fprintln(os.Stderr, "usage: priority_queue ENDPOINTS NAME put VALUE:PRIORITY... | get N")
		os.Exit(2)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(os.Args[1], ","),
		DialTimeout: 5 * time.Second,
	})
	check(err)
	defer cli.Close()
	q := recipe.NewPriorityQueue(cli, os.Args[2])
	switch os.Args[3] {
	case "put":
		for _, item := range os.Args[4:] {
			i := strings.LastIndex(item, ":")
			pr, err := strconv.ParseUint(item[i+1:], 10, 16)
			check(err)
			check(q.Enqueue(item[:i], uint16(pr)))
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
