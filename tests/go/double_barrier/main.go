// A Go participant of etcdkit's double barrier interop tests (tests/test_barrier.py): etcd
// 3.4's contrib/recipes DoubleBarrier.
//
//	double_barrier ENDPOINTS NAME COUNT
//
// It enters (prints "entered" once Enter returns), waits for a line on stdin, leaves (prints
// "left" once Leave returns) and exits.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: double_barrier ENDPOINTS NAME COUNT")
		os.Exit(2)
	}
	count, err := strconv.Atoi(os.Args[3])
	check(err)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(os.Args[1], ","),
		DialTimeout: 5 * time.Second,
	})
	check(err)
	defer cli.Close()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	check(err)
	defer s.Close()
	b := recipe.NewDoubleBarrier(s, os.Args[2], count)
	fmt.Println("entering")
	check(b.Enter())
	fmt.Println("entered")
	bufio.NewReader(os.Stdin).ReadString('\n')
	check(b.Leave())
	fmt.Println("left")
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
