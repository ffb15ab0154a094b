// A pod sandbox's process for the kubelet node test (tests/image/node.py): it holds the
// pod's namespaces and exits on SIGTERM or SIGINT. No registry is reachable here, so
// registry.k8s.io/pause cannot be pulled; this is the same job in a static binary.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
