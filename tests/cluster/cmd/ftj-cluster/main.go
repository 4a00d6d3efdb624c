// Command ftj-cluster runs a real Kubernetes control plane for the project's tests:
// embedded etcd, kube-apiserver, kube-controller-manager and kube-scheduler, all
// built from k8s.io/kubernetes at the release pinned in go.mod.
//
// It is a multi-call binary; tests/cluster/up.sh runs each component as its own
// process (the components install process-wide signal handlers and logging, so they
// cannot share one process):
//
//	ftj-cluster pki                --run-dir DIR --apiserver-port PORT
//	ftj-cluster apiserver          --run-dir DIR --port PORT --etcd-port PORT --etcd-peer-port PORT [-- extra kube-apiserver flags]
//	ftj-cluster controller-manager --run-dir DIR --port PORT [-- extra kube-controller-manager flags]
//	ftj-cluster scheduler          --run-dir DIR --port PORT [-- extra kube-scheduler flags]
//	ftj-cluster free-ports N
//
// Everything listens on 127.0.0.1 only.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	sub, args := os.Args[1], os.Args[2:]
	var err error
	switch sub {
	case "pki":
		err = runPKI(args)
	case "apiserver":
		err = runAPIServer(args)
	case "controller-manager":
		err = runControllerManager(args)
	case "scheduler":
		err = runScheduler(args)
	case "free-ports":
		err = runFreePorts(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftj-cluster %s: %v\n", sub, err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ftj-cluster pki|apiserver|controller-manager|scheduler|free-ports [flags] [-- component flags]")
	os.Exit(2)
}

// commonFlags are the flags every component subcommand takes before "--".
type commonFlags struct {
	runDir string
	port   int
}

// parseFlags parses our own flags and returns the component flags after "--".
func parseFlags(fs *flag.FlagSet, c *commonFlags, args []string) ([]string, error) {
	fs.StringVar(&c.runDir, "run-dir", "", "run directory holding pki/, etcd/ and the kubeconfigs")
	fs.IntVar(&c.port, "port", 0, "secure port to serve on (127.0.0.1)")
	var extra []string
	for i, a := range args {
		if a == "--" {
			args, extra = args[:i], args[i+1:]
			break
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.runDir == "" || c.port == 0 {
		return nil, fmt.Errorf("--run-dir and --port are required")
	}
	return extra, nil
}
