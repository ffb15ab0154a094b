// cert-manager's own controllers, unchanged, for the tests (see ../build.sh).
//
// The Go module proxy serves github.com/cert-manager/cert-manager (the controllers live
// in its pkg/controller/...), but not the separate module of its binary,
// github.com/cert-manager/cert-manager/cmd/controller (403 "This module version is not
// available"). So this main does what that binary's app does for the controllers the
// tests need: it builds cert-manager's controller ContextFactory from a kubeconfig,
// constructs the named controllers from cert-manager's registry (controllerpkg.Known),
// starts the shared informers and runs them. No leader election: one process per test.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Each registers itself with controllerpkg in init(), as in cert-manager's binary.
	// The issuers controller and the SelfSigned and CA signers serve the chart's
	// dataPlane.certManager test (tests/install/test_cert_manager_tls_cluster.py).
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
)

func main() {
	klog.InitFlags(nil)
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	namespace := flag.String("namespace", "", "only this namespace (all if empty)")
	clusterNS := flag.String("cluster-resource-namespace", "kube-system", "namespace of cluster issuers' resources")
	workers := flag.Int("concurrent-workers", 5, "workers per controller")
	names := flag.String("controllers", "", "comma-separated controllers to run (all registered if empty)")
	flag.Parse()

	known := controllerpkg.Known()
	wanted := []string{}
	if *names == "" {
		for name := range known {
			wanted = append(wanted, name)
		}
	} else {
		wanted = strings.Split(*names, ",")
	}
	sort.Strings(wanted)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, klog.Background(), "cert-manager")
	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig: *kubeconfig,
		Namespace:  *namespace,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: *clusterNS,
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	var running sync.WaitGroup
	failed := make(chan error, len(wanted))
	for _, name := range wanted {
		fn, ok := known[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown controller %q\n", name)
			os.Exit(2)
		}
		iface, err := fn(factory)
		if err != nil {
			fmt.Fprintf(os.Stderr, "error constructing controller %s: %v\n", name, err)
			os.Exit(1)
		}
		running.Add(1)
		go func(name string) {
			defer running.Done()
			klog.InfoS("starting controller", "controller", name)
			if err := iface.Run(*workers, ctx); err != nil {
				failed <- fmt.Errorf("controller %s: %w", name, err)
			}
		}(name)
	}
	// The informers the controllers registered are shared through the factory's context.
	shared, err := factory.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	klog.InfoS("controllers started", "controllers", wanted)
	select {
	case <-ctx.Done():
	case err := <-failed:
		klog.ErrorS(err, "controller stopped")
		stop()
		running.Wait()
		os.Exit(1)
	}
	running.Wait()
}
