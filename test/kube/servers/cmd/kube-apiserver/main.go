// Command kube-apiserver is Kubernetes' API server, built at the release
// go.mod pins, for the tests that name pools by their pods against a real
// API server (test/integration's TestPodsNamed*).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
