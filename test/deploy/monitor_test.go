package deploy

import (
	"fmt"
	"slices"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Prometheus reaches every daemon: the daemon serves on its container's
// metrics port, the Service selects the DaemonSet's pods on that port,
// and the ServiceMonitor selects the Service and scrapes /metrics there.
func TestServiceMonitorScrapesEveryDaemon(t *testing.T) {
	objs := decodeOrFail(t, "helm template --set serviceMonitor.enabled=true", render(t, "serviceMonitor.enabled=true"))
	ds := only[*appsv1.DaemonSet](t, objs)
	svc := only[*corev1.Service](t, objs)
	sm := only[*monitoringv1.ServiceMonitor](t, objs)
	c := daemonContainer(t, ds)

	i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" })
	if i < 0 {
		t.Fatalf("the container has no port named metrics: %+v", c.Ports)
	}
	port := c.Ports[i].ContainerPort
	if want := fmt.Sprintf("--stats=:%d", port); !slices.Contains(c.Args, want) {
		t.Errorf("the daemon's args %v lack %s: it would not serve on its metrics port", c.Args, want)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(ds.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
		t.Errorf("the Service selects %v, which the DaemonSet's pods (%v) do not match", svc.Spec.Selector, ds.Spec.Template.Labels)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
		return p.Name == "metrics" && (p.TargetPort.StrVal == "metrics" || p.TargetPort.IntVal == port)
	}) {
		t.Errorf("the Service's ports %+v lack metrics, to the container's port %d", svc.Spec.Ports, port)
	}
	sel, err := serviceMonitorSelector(sm)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("the ServiceMonitor selects %v, which the Service's labels %v do not match", sel, svc.Labels)
	}
	if !slices.Contains(sm.Spec.NamespaceSelector.MatchNames, svc.Namespace) && !sm.Spec.NamespaceSelector.Any {
		t.Errorf("the ServiceMonitor looks in namespaces %v, not the Service's %s", sm.Spec.NamespaceSelector.MatchNames, svc.Namespace)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("the ServiceMonitor's endpoints are %+v, want port metrics, path /metrics", sm.Spec.Endpoints)
	}
}

// serviceMonitorSelector is the ServiceMonitor's selector, as the operator reads it.
func serviceMonitorSelector(sm *monitoringv1.ServiceMonitor) (labels.Selector, error) {
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("the ServiceMonitor's selector: %w", err)
	}
	return sel, nil
}
