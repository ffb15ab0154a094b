// The upstream kube-apiserver, unchanged: a main around k8s.io/kubernetes/cmd/kube-apiserver/app.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
