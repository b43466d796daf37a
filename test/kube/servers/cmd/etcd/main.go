// Command etcd is the etcd server kube-apiserver stores its objects in,
// built at the release go.mod pins, for the same tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
