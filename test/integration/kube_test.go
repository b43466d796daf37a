package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/test/harness"
)

// TestPodsNamedByTheAPIServer: a real kube-apiserver (on its own etcd; no
// controller, no kubelet) holds deploy/kubernetes's DaemonSet and RBAC,
// and a pod on this node whose container runs a uWSGI pool in a
// containerd-shaped cgroup, its status set as a kubelet would; a discovery
// daemon given a kubeconfig for the DaemonSet's ServiceAccount (so with
// the chart's RBAC alone) names the pool by the pod: in its dump, in the
// list of pools and on /metrics. A pod on another node names nothing
// here. The pod's owner renamed shows; the pod deleted while its pool
// runs keeps its names, marked deleted, until the pool ends.
func TestPodsNamedByTheAPIServer(t *testing.T) {
	testutil.RequireEBPF(t)
	testutil.SkipEmulated(t, "naming pools by their pods is the daemon's userspace, the same on every kernel; kube-apiserver would take minutes to start here")
	api := harness.StartKubeAPI(t)
	api.Namespace(t, "shop")
	c := harness.NewContainer(t, harness.Containerd)
	p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2, Container: c})
	pod := api.RunPod(t, webPod("node-1"), map[string]string{"app": "containerd://" + c.ID})
	elsewhere := harness.NewContainer(t, harness.Containerd)
	q := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2, Container: elsewhere})
	other := webPod("node-2")
	other.Name = "web-7d9f8b6c5-q8r2t"
	api.RunPod(t, other, map[string]string{"app": "containerd://" + elsewhere.ID})

	d := harness.StartDiscovery(t, "--discover-interval", discoverEvery, "--kubeconfig", api.Kubeconfig, "--node-name", "node-1",
		"--metrics-labels", "pool,server,namespace,pod,container,owner_kind,owner_name")
	want := observer.Pod{Namespace: "shop", Name: pod.Name, Container: "app", Owner: &observer.Owner{Kind: "Deployment", Name: "web"}}
	l := waitPod(t, d, p.PID, want)
	match := map[string]string{"pool": l.ID, "namespace": "shop", "pod": pod.Name, "container": "app", "owner_kind": "Deployment", "owner_name": "web", "worker": "1"}
	body := harness.MetricsText(t, d)
	if _, ok := harness.MetricValue(t, body, "workerstats_worker_requests_total", match); !ok {
		t.Errorf("/metrics has no workerstats_worker_requests_total%v", match)
	}
	listed, _ := json.Marshal(l)
	t.Logf("listed: %s", listed)
	t.Logf("its dump, GET %s:\n%s", l.Path, harness.ReadRaw(t, poolURL(d, l)))
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "workerstats_up{") || strings.HasPrefix(line, "workerstats_worker_requests_total{") {
			t.Logf("/metrics: %s", line)
		}
	}
	if lq := waitListed(t, d, q.PID, 2); lq.Pod != nil {
		t.Errorf("a pool of a pod on another node named %+v", lq.Pod)
	}

	yes := true
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "db", UID: "u-db", Controller: &yes}}
	if _, err := api.Admin.CoreV1().Pods("shop").Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want.Owner = &observer.Owner{Kind: "StatefulSet", Name: "db"}
	waitPod(t, d, p.PID, want)

	zero := int64(0)
	if err := api.Admin.CoreV1().Pods("shop").Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	want.Deleted = true
	l = waitPod(t, d, p.PID, want)
	st, err := harness.ReadStats(poolURL(d, l))
	if err != nil {
		t.Fatal(err)
	}
	if st.Pod == nil || *st.Pod.Owner != *want.Owner || st.Pod.Name != want.Name || !st.Pod.Deleted {
		t.Errorf("the deleted pod's pool dumps pod %+v, want %+v", st.Pod, want)
	}
	t.Logf("pool %s (master %d) named %s/%s container %s, owner %s %s, deleted %v", l.ID, p.PID,
		l.Pod.Namespace, l.Pod.Name, l.Pod.Container, l.Pod.Owner.Kind, l.Pod.Owner.Name, l.Pod.Deleted)
}

// webPod is a pod of Deployment web (through its ReplicaSet) on node.
func webPod(node string) *corev1.Pod {
	yes := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-7d9f8b6c5-x2x4z", Namespace: "shop",
			Labels:          map[string]string{"app": "web", "pod-template-hash": "7d9f8b6c5"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9f8b6c5", UID: "u-rs", Controller: &yes}},
		},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "web:1"}}},
	}
}

// waitPod waits until discovery daemon d lists the pool of master with
// pod want, and returns it.
func waitPod(t *testing.T, d *harness.Daemon, master int, want observer.Pod) harness.Listed {
	t.Helper()
	var found harness.Listed
	harness.WaitFor(t, 20*time.Second, "the pool of master "+strconv.Itoa(master)+" named by its pod", func() error {
		found = waitListed(t, d, master, 2)
		got := found.Pod
		if got == nil || got.Namespace != want.Namespace || got.Name != want.Name || got.Container != want.Container ||
			got.Deleted != want.Deleted || got.Owner == nil || *got.Owner != *want.Owner {
			return fmt.Errorf("listed with pod %+v, want %+v", got, want)
		}
		return nil
	})
	return found
}
