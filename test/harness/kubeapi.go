package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/workerstats/workerstats/internal/testutil"
)

// KubeServersEnv names the directory of the kube-apiserver and etcd
// binaries the tests against a real API server run; by default the
// repository's build/kube, where make kube-servers builds them.
const KubeServersEnv = "WORKERSTATS_KUBE_SERVERS"

// KubeAPI is a real Kubernetes API server (kube-apiserver on its own
// etcd, no controller or kubelet) that a test started, holding what
// deploy/kubernetes/workerstats.yaml creates (the DaemonSet, its
// ServiceAccount and RBAC, its Service). Admin is a client that may do
// anything, and Kubeconfig a kubeconfig file for the DaemonSet's
// ServiceAccount, which may do what the chart's ClusterRole allows (get,
// list and watch pods) and nothing else.
type KubeAPI struct {
	Admin      kubernetes.Interface
	Kubeconfig string
	URL        string
}

// StartKubeAPI starts etcd and kube-apiserver for t, stopped at its end.
// Without the built binaries it skips t, saying how to build them (fails
// it where testutil.RequirePrivilegedEnv is set, as in CI).
func StartKubeAPI(t testing.TB) *KubeAPI {
	t.Helper()
	dir := os.Getenv(KubeServersEnv)
	if dir == "" {
		dir = RepoPath(t, "build/kube")
	}
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			testutil.SkipOrFail(t, "no %s in %s: build kube-apiserver and etcd with make kube-servers (or name their directory in %s)", bin, dir, KubeServersEnv)
		}
	}
	tmp := t.TempDir()
	etcd := startEtcd(t, dir, tmp)
	port := FreePort(t)
	args := apiServerArgs(t, tmp, etcd, port)
	startLogged(t, "kube-apiserver", exec.Command(filepath.Join(dir, "kube-apiserver"), args...))
	api := &KubeAPI{URL: "https://127.0.0.1:" + strconv.Itoa(port)}
	api.Admin = kubeClient(t, writeKubeconfig(t, tmp, "admin", api.URL, adminToken))
	WaitFor(t, testutil.Patience(60*time.Second), "kube-apiserver to be ready", func() error {
		_, err := api.Admin.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		return err
	})
	api.Kubeconfig = api.applyManifests(t, tmp)
	return api
}

const adminToken = "workerstats-test-admin"

// startEtcd starts an etcd of one member on loopback, and returns its
// client URL.
func startEtcd(t testing.TB, dir, tmp string) string {
	t.Helper()
	client := "http://127.0.0.1:" + strconv.Itoa(FreePort(t))
	peer := "http://127.0.0.1:" + strconv.Itoa(FreePort(t))
	cmd := exec.Command(filepath.Join(dir, "etcd"), "--name", "test", "--data-dir", filepath.Join(tmp, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "test="+peer)
	startLogged(t, "etcd", cmd)
	return client
}

// startLogged starts cmd, a server called name, until t ends; its output
// is in t's log if t fails.
func startLogged(t testing.TB, name string, cmd *exec.Cmd) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	StartGroup(t, cmd, syscall.SIGTERM, func() string { return name + " log:\n" + out.String() })
}

// apiServerArgs are kube-apiserver's flags: serving on port of loopback
// with certificates it makes itself, the admin's token, RBAC, and the
// key it signs service accounts' tokens with, made here.
func apiServerArgs(t testing.TB, tmp, etcd string, port int) []string {
	t.Helper()
	tokens := filepath.Join(tmp, "tokens.csv")
	users := adminToken + ",admin,1,system:masters\n"
	if err := os.WriteFile(tokens, []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(tmp, "sa.key")
	writeRSAKey(t, key)
	return []string{
		"--etcd-servers", etcd, "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		// No Service endpoints to keep: nothing here reaches the API
		// through the kubernetes Service (and loopback is refused for it).
		"--endpoint-reconciler-type", "none",
		"--secure-port", strconv.Itoa(port), "--cert-dir", filepath.Join(tmp, "certs"),
		"--token-auth-file", tokens, "--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", key,
		"--service-account-signing-key-file", key, "--service-cluster-ip-range", "10.96.0.0/24",
	}
}

// writeRSAKey writes a new RSA private key, PEM-encoded, to path.
func writeRSAKey(t testing.TB, path string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeKubeconfig writes a kubeconfig for user with token on the server
// at url, whose certificate is its own (not checked), and returns its path.
func writeKubeconfig(t testing.TB, dir, user, url, token string) string {
	t.Helper()
	path := filepath.Join(dir, user+".kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: %s
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: %s}
current-context: test
`, url, user, token, user)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubeClient is a clientset of kubeconfig.
func kubeClient(t testing.TB, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Namespace creates namespace ns with its default ServiceAccount, which
// no controller makes here and the admission of pods wants.
func (api *KubeAPI) Namespace(t testing.TB, ns string) {
	t.Helper()
	ctx := context.Background()
	if _, err := api.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns}}
	if _, err := api.Admin.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// RunPod creates pod on its node and sets its containers' statuses as a
// kubelet would once they run: each container of pod.Spec running, with
// its ID from ids (by name, "containerd://" and 64 hex digits).
func (api *KubeAPI) RunPod(t testing.TB, pod *corev1.Pod, ids map[string]string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	made, err := api.Admin.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	made.Status.Phase = corev1.PodRunning
	for _, c := range made.Spec.Containers {
		made.Status.ContainerStatuses = append(made.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, ContainerID: ids[c.Name], Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	made, err = api.Admin.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, made, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return made
}
