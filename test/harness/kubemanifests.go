package harness

import (
	"context"
	"fmt"
	"os"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/workerstats/workerstats/internal/kubeyaml"
)

// Manifests is where the DaemonSet and what it needs are, as the Helm
// chart renders them with its default values.
const Manifests = "deploy/kubernetes/workerstats.yaml"

// manifestsNamespace is the namespace Manifests are rendered in.
const manifestsNamespace = "workerstats"

// applyManifests creates the objects of Manifests as their README says an
// operator would: the namespace first, labelled for Pod Security's
// privileged level, then every object, each validated strictly by the API
// server (an unknown or duplicated field is an error, as is anything its
// validation refuses). It returns a kubeconfig for the chart's
// ServiceAccount, with a token the API server issued, so that what the
// daemon may do there is exactly what the chart's RBAC allows.
func (api *KubeAPI) applyManifests(t testing.TB, dir string) string {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: manifestsNamespace,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}
	if _, err := api.Admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(RepoPath(t, Manifests))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := kubeyaml.Decode(b, scheme.Scheme)
	if err != nil {
		t.Fatalf("%s: %v", Manifests, err)
	}
	var sa *corev1.ServiceAccount
	for _, o := range objs {
		if err := create(ctx, api.Admin, o); err != nil {
			t.Fatalf("the API server refused %s's %T: %v", Manifests, o, err)
		}
		if s, ok := o.(*corev1.ServiceAccount); ok {
			sa = s
		}
	}
	if sa == nil {
		t.Fatalf("%s has no ServiceAccount", Manifests)
	}
	t.Logf("%s: the API server took its %d objects, strictly validated", Manifests, len(objs))
	hour := int64(3600)
	tr, err := api.Admin.CoreV1().ServiceAccounts(sa.Namespace).CreateToken(ctx, sa.Name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &hour}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a token for ServiceAccount %s/%s: %v", sa.Namespace, sa.Name, err)
	}
	return writeKubeconfig(t, dir, "serviceaccount-"+sa.Name, api.URL, tr.Status.Token)
}

// create creates o through c, with the API server's strict field
// validation.
func create(ctx context.Context, c kubernetes.Interface, o runtime.Object) error {
	opts := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}
	var err error
	switch o := o.(type) {
	case *corev1.ServiceAccount:
		_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
	case *corev1.Service:
		_, err = c.CoreV1().Services(o.Namespace).Create(ctx, o, opts)
	case *rbacv1.ClusterRole:
		_, err = c.RbacV1().ClusterRoles().Create(ctx, o, opts)
	case *rbacv1.ClusterRoleBinding:
		_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
	case *appsv1.DaemonSet:
		_, err = c.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, opts)
	default:
		err = fmt.Errorf("the test creates no %T", o)
	}
	return err
}
