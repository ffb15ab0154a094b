// The upstream kubelet, unchanged: a main around its app package, built only on demand
// (../build.sh kubelet) for the attempt to run qkms's pods on a node of these machines.
// Its own module, at the same k8s.io/kubernetes release as ../kube: its dependencies
// would otherwise change ../kube's go.sum, and so the cached control-plane builds.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
