package kube

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// These run the informer against client-go's fake clientset; the tests
// against a real API server are test/integration's TestPodsNamed*.

const (
	cidApp  = "1111111111111111111111111111111111111111111111111111111111111111"
	cidSide = "2222222222222222222222222222222222222222222222222222222222222222"
)

// webPod is a pod of Deployment web (through ReplicaSet web-7d9f8b6c5)
// on node n1, with an app container and a sidecar.
func webPod() *corev1.Pod {
	yes := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-7d9f8b6c5-x2x4z", Namespace: "shop", UID: "u1",
			Labels:          map[string]string{"app": "web", templateHash: "7d9f8b6c5"},
			Annotations:     map[string]string{"big": strings.Repeat("x", 10000)},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-7d9f8b6c5", Controller: &yes}},
		},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "app"}, {Name: "side"}}},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app", ContainerID: "containerd://" + cidApp, Image: "web:1"},
			{Name: "side", ContainerID: "cri-o://" + cidSide, Image: "side:1"},
		}},
	}
}

// fakePods are a fake clientset's pods, which say (as the clientset does)
// that they cannot stream the first list as watch events.
type fakePods struct {
	podLister
	client *fake.Clientset
}

func (f fakePods) IsWatchListSemanticsUnSupported() bool {
	return f.client.IsWatchListSemanticsUnSupported()
}

// watchPods starts Pods over a fake clientset holding objs, and waits for its
// first list.
func watchPods(t *testing.T, ctx context.Context, objs ...*corev1.Pod) (*Pods, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset()
	for _, o := range objs {
		if _, err := client.CoreV1().Pods(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := watchWith(ctx, fakePods{client.CoreV1().Pods(metav1.NamespaceAll), client}, Options{Node: "n1", Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first list", func() bool { return p.informer.HasSynced() })
	return p, client
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPodOfNamesEachContainer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, _ := watchPods(t, ctx, webPod())
	web := &observer.Owner{Kind: "Deployment", Name: "web"}
	for id, want := range map[string]observer.Pod{
		cidApp:  {Namespace: "shop", Name: "web-7d9f8b6c5-x2x4z", Container: "app", Owner: web},
		cidSide: {Namespace: "shop", Name: "web-7d9f8b6c5-x2x4z", Container: "side", Owner: web},
	} {
		got, ok := p.PodOf(id)
		if !ok || got.Namespace != want.Namespace || got.Name != want.Name || got.Container != want.Container ||
			got.Owner == nil || *got.Owner != *want.Owner || got.Deleted {
			t.Errorf("PodOf(%.8s) = %+v, %v; want %+v", id, got, ok, want)
		}
	}
	if got, ok := p.PodOf(strings.Repeat("3", 64)); ok {
		t.Errorf("a container of no pod named %+v", got)
	}
	// What the informer keeps is trimmed: no spec, no annotations.
	obj, _, _ := p.informer.GetStore().GetByKey("shop/web-7d9f8b6c5-x2x4z")
	kept := obj.(*corev1.Pod)
	if len(kept.Annotations) != 0 || len(kept.Spec.Containers) != 0 || kept.Status.ContainerStatuses[0].Image != "" {
		t.Errorf("kept more than the names: %+v", kept)
	}
}

// A deleted pod is named, deleted, for Forget; an owner renamed (the pod
// adopted by another controller) shows at once.
func TestDeletedPodRememberedRenamedOwnerShows(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pod := webPod()
	p, client := watchPods(t, ctx, pod)
	now := time.Now()
	p.now = func() time.Time { return now }

	yes := true
	pod.OwnerReferences = []metav1.OwnerReference{{Kind: "StatefulSet", Name: "db", Controller: &yes}}
	if _, err := client.CoreV1().Pods("shop").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new owner", func() bool {
		got, _ := p.PodOf(cidApp)
		return got.Owner != nil && *got.Owner == observer.Owner{Kind: "StatefulSet", Name: "db"}
	})

	if err := client.CoreV1().Pods("shop").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pod remembered as deleted", func() bool {
		got, ok := p.PodOf(cidApp)
		return ok && got.Deleted && got.Name == pod.Name && got.Container == "app"
	})
	now = now.Add(DefaultForget + time.Second)
	if got, ok := p.PodOf(cidApp); ok {
		t.Errorf("a pod deleted %v ago still named: %+v", DefaultForget, got)
	}
}

// Only the node's pods are listed: the field selector goes to the API
// server (the fake one does not apply it, so this checks the request).
func TestOnlyTheNodesPods(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, client := watchPods(t, ctx)
	listed := false
	for _, a := range client.Actions() {
		l, ok := a.(k8stesting.ListAction)
		if !ok || a.GetResource().Resource != "pods" {
			continue
		}
		listed = true
		if f := l.GetListRestrictions().Fields.String(); f != "spec.nodeName=n1" {
			t.Errorf("pods listed with field selector %q, want spec.nodeName=n1", f)
		}
	}
	if !listed {
		t.Fatalf("no list of pods: %v", client.Actions())
	}
}

func TestOwner(t *testing.T) {
	yes := true
	for _, c := range []struct {
		kind, name, hash string
		want             *observer.Owner
	}{
		{"ReplicaSet", "web-7d9f8b6c5", "7d9f8b6c5", &observer.Owner{Kind: "Deployment", Name: "web"}},
		{"ReplicaSet", "web-abc", "", &observer.Owner{Kind: "ReplicaSet", Name: "web-abc"}}, // a ReplicaSet made alone
		{"ReplicaSet", "web-abc", "zzz", &observer.Owner{Kind: "ReplicaSet", Name: "web-abc"}},
		{"DaemonSet", "agent", "", &observer.Owner{Kind: "DaemonSet", Name: "agent"}},
		{"", "", "", nil},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{}}}
		if c.kind != "" {
			pod.OwnerReferences = []metav1.OwnerReference{{Kind: c.kind, Name: c.name, Controller: &yes}}
		}
		if c.hash != "" {
			pod.Labels[templateHash] = c.hash
		}
		got := owner(pod)
		if (got == nil) != (c.want == nil) || got != nil && *got != *c.want {
			t.Errorf("owner(%s %s, hash %q) = %+v, want %+v", c.kind, c.name, c.hash, got, c.want)
		}
	}
}

// Outside a cluster is not a mistake, with or without a node name; in
// one, a missing node name is, and says what to set.
func TestWatchNeedsANode(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for _, node := range []string{"", "n1"} {
		if _, err := Watch(context.Background(), Options{Node: node}); err != ErrNoCluster {
			t.Errorf("Watch outside a cluster, node %q: %v, want ErrNoCluster", node, err)
		}
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n" +
		"users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Watch(context.Background(), Options{Kubeconfig: kubeconfig})
	if err == nil || !strings.Contains(err.Error(), "NODE_NAME") {
		t.Errorf("Watch in a cluster without a node: %v, want an error naming NODE_NAME", err)
	}
}
