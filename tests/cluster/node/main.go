// Command ftj-node runs the real node of the project's local cluster: the kubelet and
// kube-proxy, built from k8s.io/kubernetes at the release pinned in go.mod. It is a
// multi-call binary (each component installs process-wide signal handlers and logging,
// so tests/cluster/node.sh runs each as its own process):
//
//	ftj-node kubelet [kubelet flags]
//	ftj-node proxy   [kube-proxy flags]
//
// Apart from the blank imports the upstream mains carry, this is their main() verbatim:
// the node runs the upstream kubelet and kube-proxy unchanged.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as in the upstream mains
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var cmd *cobra.Command
	switch os.Args[1] {
	case "kubelet":
		cmd = kubelet.NewKubeletCommand(context.Background())
	case "proxy":
		cmd = proxy.NewProxyCommand()
	default:
		usage()
	}
	cmd.SetArgs(os.Args[2:])
	os.Exit(cli.Run(cmd))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ftj-node kubelet|proxy [component flags]")
	os.Exit(2)
}
