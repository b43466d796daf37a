package kubeyaml

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
)

func TestDecodeSkipsCommentsAndKeepsOrder(t *testing.T) {
	stream := "# a header\n---\n# Source: a\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: x}\n---\n\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n"
	objs, err := Decode([]byte(stream), scheme.Scheme)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("%d objects, want 2", len(objs))
	}
	if sa, ok := objs[0].(*corev1.ServiceAccount); !ok || sa.Name != "a" || sa.Namespace != "x" {
		t.Errorf("first object %#v, want ServiceAccount x/a", objs[0])
	}
	if _, ok := objs[1].(*corev1.Service); !ok {
		t.Errorf("second object %T, want *v1.Service", objs[1])
	}
}

// A misspelt field, a duplicated one, a wrong type or an unknown kind is
// an error naming its document, not an object quietly missing something.
func TestDecodeIsStrict(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {typo: 1}\n",
		"duplicate field": "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nmetadata: {name: c}\n",
		"wrong type":      "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: 80}\n",
		"unknown kind":    "apiVersion: v1\nkind: Gadget\nmetadata: {name: b}\n",
	} {
		_, err := Decode([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n"+doc), scheme.Scheme)
		if err == nil || !strings.Contains(err.Error(), "document 2") {
			t.Errorf("%s: error %v, want one naming document 2", name, err)
		}
	}
}
