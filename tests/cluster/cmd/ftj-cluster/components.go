package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as in the upstream mains
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	_ "time/tzdata" // CronJob time zones, as in the upstream mains
)

// runAPIServer starts an embedded etcd and then kube-apiserver against it, in this process.
func runAPIServer(args []string) error {
	fs := flag.NewFlagSet("apiserver", flag.ContinueOnError)
	var c commonFlags
	etcdPort := fs.Int("etcd-port", 0, "etcd client port on 127.0.0.1")
	etcdPeerPort := fs.Int("etcd-peer-port", 0, "etcd peer port on 127.0.0.1")
	extra, err := parseFlags(fs, &c, args)
	if err != nil {
		return err
	}
	if *etcdPort == 0 || *etcdPeerPort == 0 {
		return fmt.Errorf("--etcd-port and --etcd-peer-port are required")
	}

	etcd, err := startEtcd(c.runDir, *etcdPort, *etcdPeerPort)
	if err != nil {
		return fmt.Errorf("embedded etcd: %w", err)
	}
	pki := func(name string) string { return filepath.Join(c.runDir, "pki", name) }
	flags := []string{
		"--advertise-address=127.0.0.1",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", c.port),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", *etcdPort),
		"--cert-dir=" + filepath.Join(c.runDir, "pki"),
		"--tls-cert-file=" + pki("apiserver.crt"),
		"--tls-private-key-file=" + pki("apiserver.key"),
		"--client-ca-file=" + pki("ca.crt"),
		"--kubelet-client-certificate=" + pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + pki("apiserver-kubelet-client.key"),
		"--requestheader-client-ca-file=" + pki("front-proxy-ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + pki("front-proxy-client.crt"),
		"--proxy-client-key-file=" + pki("front-proxy-client.key"),
		// No kube-proxy here: reach extension API servers at their endpoints, not service IPs.
		"--enable-aggregator-routing=true",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=" + serviceAccountIss,
		"--service-account-key-file=" + pki("sa.pub"),
		"--service-account-signing-key-file=" + pki("sa.key"),
		"--service-cluster-ip-range=" + serviceCIDR,
		"--allow-privileged=true",
		"--profiling=false",
	}
	code := cli.Run(withArgs(apiserver.NewAPIServerCommand(), append(flags, extra...)))
	etcd.Close()
	os.Exit(code)
	return nil
}

// startEtcd runs a single-member etcd with its data under RUN/etcd and its log in
// RUN/logs/etcd.log. fsync is off: the cluster is thrown away after the tests.
func startEtcd(runDir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = clusterName
	cfg.Dir = filepath.Join(runDir, "etcd")
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "warn"
	if err := os.MkdirAll(filepath.Join(runDir, "logs"), 0o755); err != nil {
		return nil, err
	}
	cfg.LogOutputs = []string{filepath.Join(runDir, "logs", "etcd.log")}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("not ready after 60s")
	}
}

// runControllerManager runs kube-controller-manager with every default controller,
// each under its own service account, as kubeadm sets it up.
func runControllerManager(args []string) error {
	fs := flag.NewFlagSet("controller-manager", flag.ContinueOnError)
	var c commonFlags
	extra, err := parseFlags(fs, &c, args)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(c.runDir, "controller-manager.kubeconfig")
	pki := func(name string) string { return filepath.Join(c.runDir, "pki", name) }
	flags := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", c.port),
		"--cert-dir=" + filepath.Join(c.runDir, "pki", "controller-manager"),
		"--leader-elect=false",
		"--controllers=*",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + pki("sa.key"),
		"--root-ca-file=" + pki("ca.crt"),
		"--cluster-signing-cert-file=" + pki("ca.crt"),
		"--cluster-signing-key-file=" + pki("ca.key"),
		"--cluster-name=" + clusterName,
		"--profiling=false",
	}
	os.Exit(cli.Run(withArgs(controllermanager.NewControllerManagerCommand(), append(flags, extra...))))
	return nil
}

// runScheduler runs kube-scheduler with its default profile.
func runScheduler(args []string) error {
	fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
	var c commonFlags
	extra, err := parseFlags(fs, &c, args)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(c.runDir, "scheduler.kubeconfig")
	flags := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", c.port),
		"--cert-dir=" + filepath.Join(c.runDir, "pki", "scheduler"),
		"--leader-elect=false",
		"--profiling=false",
	}
	os.Exit(cli.Run(withArgs(scheduler.NewSchedulerCommand(), append(flags, extra...))))
	return nil
}

func withArgs(cmd *cobra.Command, args []string) *cobra.Command {
	cmd.SetArgs(args)
	return cmd
}
