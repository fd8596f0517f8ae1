// naming_resolver is a Go gRPC client that resolves etcd:///TARGET with etcd's resolver
// (go.etcd.io/etcd/clientv3/naming/resolver, etcd 3.4) and the round_robin policy, for
// tests/test_naming_go.py:
//
//	naming_resolver ENDPOINT TARGET METHOD N
//
// It calls METHOD (e.g. /test.Echo/Who) N times with the request "go" as raw bytes (no
// protobuf: a codec that passes bytes through) and prints each reply on a line.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/resolver"
	"google.golang.org/grpc"
)

// rawCodec sends and receives the message bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

func main() {
	if len(os.Args) != 5 {
		log.Fatalf("usage: %s ENDPOINT TARGET METHOD N", os.Args[0])
	}
	endpoint, target, method := os.Args[1], os.Args[2], os.Args[3]
	n, err := strconv.Atoi(os.Args[4])
	if err != nil {
		log.Fatalf("N: %v", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatalf("connect: %v", err)
	}
	defer cli.Close()
	builder, err := resolver.NewBuilder(cli)
	if err != nil {
		log.Fatalf("resolver: %v", err)
	}
	conn, err := grpc.Dial("etcd:///"+target,
		grpc.WithResolvers(builder),
		grpc.WithInsecure(),
		grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`),
	)
	if err != nil {
		log.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req := []byte("go")
		var reply []byte
		err := conn.Invoke(ctx, method, &req, &reply, grpc.ForceCodec(rawCodec{}), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			log.Fatalf("call %d: %v", i, err)
		}
		fmt.Println(string(reply))
	}
}
