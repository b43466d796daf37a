package deploy

import (
	"fmt"
	"os"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/workerstats/workerstats/internal/kubeyaml"
)

// decodeAll decodes every object of a multi-document YAML stream into its
// Go type, strictly (kubeyaml.Decode), knowing Kubernetes' own kinds and
// prometheus-operator's.
func decodeAll(stream []byte) ([]runtime.Object, error) {
	s := runtime.NewScheme()
	if err := scheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("kubernetes scheme: %w", err)
	}
	if err := monitoringv1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("monitoring.coreos.com/v1 scheme: %w", err)
	}
	return kubeyaml.Decode(stream, s)
}

// decodeOrFail decodes stream, what names where it came from.
func decodeOrFail(t *testing.T, what string, stream []byte) []runtime.Object {
	t.Helper()
	objs, err := decodeAll(stream)
	if err != nil {
		t.Fatalf("%s: %v: fix the chart's templates (field names as in the Kubernetes API reference)", what, err)
	}
	return objs
}

// Every object the chart renders is a valid object of its kind, as the
// API server would take it: with its default values (the committed
// manifests), and with the ServiceMonitor on.
func TestRenderedObjectsDecodeStrictly(t *testing.T) {
	committed, err := os.ReadFile(repoPath(manifestsPath))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what   string
		stream []byte
		want   []string
	}{
		{manifestsPath, committed, []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"}},
		{"helm template --set serviceMonitor.enabled=true", render(t, "serviceMonitor.enabled=true"),
			[]string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet", "ServiceMonitor"}},
		{"helm template --set privileged=true", render(t, "privileged=true"),
			[]string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"}},
	} {
		objs := decodeOrFail(t, c.what, c.stream)
		kinds := map[string]int{}
		for _, o := range objs {
			kinds[kindOf(o)]++
		}
		for _, k := range c.want {
			if kinds[k] != 1 {
				t.Errorf("%s: %d %s, want 1", c.what, kinds[k], k)
			}
		}
		if len(objs) != len(c.want) {
			t.Errorf("%s: %d objects %v, want %v", c.what, len(objs), kinds, c.want)
		}
		t.Logf("%s: %d objects decoded strictly: %v", c.what, len(objs), kinds)
	}
}

// The strict decoder refuses what the API server would not take, so that
// the test above proves something.
func TestStrictDecodeRefusesUnknownFields(t *testing.T) {
	for _, bad := range []string{
		"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1, targetprot: 2}]}\n",
		"apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec: {endpoints: [{port: m, intervall: 30s}]}\n",
		"apiVersion: apps/v1\nkind: DeamonSet\nmetadata: {name: x}\n",
	} {
		if _, err := decodeAll([]byte(bad)); err == nil {
			t.Errorf("decoded without error, want a strict decoding error:\n%s", bad)
		}
	}
}

// kindOf is obj's kind, as its document says it.
func kindOf(obj runtime.Object) string {
	return obj.GetObjectKind().GroupVersionKind().Kind
}
