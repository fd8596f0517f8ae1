// naming_endpoints drives Go's etcd endpoints.Manager (go.etcd.io/etcd/clientv3/naming/endpoints,
// etcd 3.4) for tests/test_naming_go.py:
//
//	naming_endpoints ENDPOINT TARGET add KEY ADDR [METADATA_JSON]
//	naming_endpoints ENDPOINT TARGET delete KEY
//	naming_endpoints ENDPOINT TARGET list            one JSON object {key: {"Addr","Metadata"}}
//	naming_endpoints ENDPOINT TARGET watch           {"ready":true}, then one JSON line per batch
//
// watch runs until its stdin closes.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
)

func main() {
	if len(os.Args) < 4 {
		log.Fatalf("usage: %s ENDPOINT TARGET add|delete|list|watch ...", os.Args[0])
	}
	endpoint, target, cmd, args := os.Args[1], os.Args[2], os.Args[3], os.Args[4:]
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		log.Fatalf("connect: %v", err)
	}
	defer cli.Close()
	em, err := endpoints.NewManager(cli, target)
	if err != nil {
		log.Fatalf("manager: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	switch cmd {
	case "add":
		ep := endpoints.Endpoint{Addr: args[1]}
		if len(args) > 2 {
			if err := json.Unmarshal([]byte(args[2]), &ep.Metadata); err != nil {
				log.Fatalf("metadata: %v", err)
			}
		}
		if err := em.AddEndpoint(ctx, args[0], ep); err != nil {
			log.Fatalf("add: %v", err)
		}
		fmt.Println("ok")
	case "delete":
		if err := em.DeleteEndpoint(ctx, args[0]); err != nil {
			log.Fatalf("delete: %v", err)
		}
		fmt.Println("ok")
	case "list":
		eps, err := em.List(ctx)
		if err != nil {
			log.Fatalf("list: %v", err)
		}
		out, err := json.Marshal(eps)
		if err != nil {
			log.Fatalf("marshal: %v", err)
		}
		fmt.Println(string(out))
	case "watch":
		wctx, wcancel := context.WithCancel(context.Background())
		defer wcancel()
		wch, err := em.NewWatchChannel(wctx)
		if err != nil {
			log.Fatalf("watch: %v", err)
		}
		fmt.Println(`{"ready":true}`)
		go func() {
			_, _ = io.Copy(ioutil.Discard, os.Stdin)
			wcancel()
		}()
		for ups := range wch {
			out, err := json.Marshal(ups)
			if err != nil {
				log.Fatalf("marshal: %v", err)
			}
			fmt.Println(string(out))
		}
	default:
		log.Fatalf("unknown command %q", cmd)
	}
}
