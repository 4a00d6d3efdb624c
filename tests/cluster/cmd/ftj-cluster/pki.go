package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Names and addresses shared by the PKI and the component flags.
const (
	clusterName       = "ftj-test"
	serviceCIDR       = "10.96.0.0/16"
	kubernetesSvcIP   = "10.96.0.1"
	serviceAccountIss = "https://kubernetes.default.svc.cluster.local"
)

// clientIdentity is one client certificate and the kubeconfig that carries it.
type clientIdentity struct {
	file   string // kubeconfig file name in the run dir; also the pki/ file stem
	user   string // certificate CN = Kubernetes user name
	groups []string
}

var clientIdentities = []clientIdentity{
	{file: "admin", user: "kubernetes-admin", groups: []string{"system:masters"}},
	{file: "controller-manager", user: "system:kube-controller-manager"},
	{file: "scheduler", user: "system:kube-scheduler"},
	// KWOK plays every simulated kubelet; it needs nodes, pods, leases and events
	// cluster-wide, which no bootstrap role grants to one identity.
	{file: "kwok", user: "kwok-controller", groups: []string{"system:masters"}},
	// The API server's client identity towards kubelets (logs, exec); a node agent
	// that serves the kubelet API can check it against ca.crt.
	{file: "apiserver-kubelet-client", user: "kube-apiserver-kubelet-client", groups: []string{"system:masters"}},
}

// runPKI writes a fresh CA, serving and client certificates, the service-account
// signing key and one kubeconfig per client identity into the run dir.
func runPKI(args []string) error {
	fs := flag.NewFlagSet("pki", flag.ContinueOnError)
	runDir := fs.String("run-dir", "", "run directory")
	port := fs.Int("apiserver-port", 0, "kube-apiserver secure port on 127.0.0.1")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *runDir == "" || *port == 0 {
		return fmt.Errorf("--run-dir and --apiserver-port are required")
	}
	pkiDir := filepath.Join(*runDir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return err
	}

	caKey, caCert, err := newCA(pkiDir, "ca", clusterName+"-ca")
	if err != nil {
		return err
	}
	// The aggregation layer's CA: the API server proxies to extension API servers with
	// front-proxy-client, and controllers read it from extension-apiserver-authentication.
	proxyCAKey, proxyCACert, err := newCA(pkiDir, "front-proxy-ca", clusterName+"-front-proxy-ca")
	if err != nil {
		return err
	}
	proxyClient := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "front-proxy-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := issue(pkiDir, "front-proxy-client", proxyClient, proxyCACert, proxyCAKey); err != nil {
		return err
	}

	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(kubernetesSvcIP)},
	}
	if err := issue(pkiDir, "apiserver", serving, caCert, caKey); err != nil {
		return err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if err := writeKey(filepath.Join(pkiDir, "sa.key"), saKey); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(pkiDir, "sa.pub"), "PUBLIC KEY", pub, 0o644); err != nil {
		return err
	}

	server := fmt.Sprintf("https://127.0.0.1:%d", *port)
	for _, id := range clientIdentities {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: id.user, Organization: id.groups},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := issue(pkiDir, id.file, tmpl, caCert, caKey); err != nil {
			return err
		}
		if err := writeKubeconfig(*runDir, pkiDir, id, server); err != nil {
			return err
		}
	}
	return nil
}

// newCA creates a self-signed CA and writes pki/NAME.crt and pki/NAME.key.
func newCA(dir, name, commonName string) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return key, cert, writeCertAndKey(dir, name, cert, key)
}

// issue signs tmpl with the CA and writes pki/NAME.crt and pki/NAME.key.
func issue(dir, name string, tmpl, ca *x509.Certificate, caKey crypto.Signer) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(365 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	return writeCertAndKey(dir, name, cert, key)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err)
	}
	return n
}

func writeCertAndKey(dir, name string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	if err := writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", cert.Raw, 0o644); err != nil {
		return err
	}
	return writeKey(filepath.Join(dir, name+".key"), key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// writeKubeconfig writes RUN/NAME.kubeconfig with the CA and client cert embedded,
// so the file works on its own.
func writeKubeconfig(runDir, pkiDir string, id clientIdentity, server string) error {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(pkiDir, name)) }
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	crt, err := read(id.file + ".crt")
	if err != nil {
		return err
	}
	key, err := read(id.file + ".key")
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[id.user] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	cfg.Contexts[clusterName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: id.user, Namespace: "default"}
	cfg.CurrentContext = clusterName
	return clientcmd.WriteToFile(*cfg, filepath.Join(runDir, id.file+".kubeconfig"))
}
