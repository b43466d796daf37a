package deploy

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// unitCapabilities is the capability set the systemd unit starts the
// daemon with: its CapabilityBoundingSet and AmbientCapabilities lines,
// each name without CAP_, sorted. systemd adds up the lines of a key;
// an empty one resets it.
func unitCapabilities(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read the unit: %w", err)
	}
	defer f.Close()
	set := map[string]bool{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		key, val, ok := strings.Cut(strings.TrimSpace(s.Text()), "=")
		if !ok || (key != "CapabilityBoundingSet" && key != "AmbientCapabilities") {
			continue
		}
		if strings.HasPrefix(val, "~") {
			return nil, fmt.Errorf("%s: %s=~ (a set by exclusion) is not understood here: list the capabilities granted", path, key)
		}
		if strings.TrimSpace(val) == "" {
			clear(set)
		}
		for _, c := range strings.Fields(val) {
			set[strings.TrimPrefix(strings.ToUpper(c), "CAP_")] = true
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read the unit: %w", err)
	}
	return sortedKeys(set), nil
}

func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// capNames are names of capabilities without CAP_, sorted.
func capNames(caps []corev1.Capability) []string {
	set := map[string]bool{}
	for _, c := range caps {
		set[strings.TrimPrefix(strings.ToUpper(string(c)), "CAP_")] = true
	}
	return sortedKeys(set)
}

// committedObjects are the committed manifests, decoded.
func committedObjects(t *testing.T) []runtime.Object {
	t.Helper()
	b, err := os.ReadFile(repoPath(manifestsPath))
	if err != nil {
		t.Fatal(err)
	}
	return decodeOrFail(t, manifestsPath, b)
}

// only is the one object of type T among objs.
func only[T runtime.Object](t *testing.T, objs []runtime.Object) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("%d objects of type %T rendered, want 1", len(found), zero)
	}
	return found[0]
}

// daemonContainer is the DaemonSet's one container.
func daemonContainer(t *testing.T, ds *appsv1.DaemonSet) corev1.Container {
	t.Helper()
	if n := len(ds.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("the DaemonSet has %d containers, want 1 (workerstats)", n)
	}
	return ds.Spec.Template.Spec.Containers[0]
}

// The DaemonSet starts the daemon with the systemd unit's capabilities,
// the set TestSystemdUnitCapabilitiesSuffice proves enough, and no other:
// a capability added to one must be added to the other.
func TestDaemonSetCapabilitiesEqualSystemdUnit(t *testing.T) {
	want, err := unitCapabilities(repoPath(unitPath))
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Fatalf("%s grants no capability: the daemon cannot load eBPF without some", unitPath)
	}
	c := daemonContainer(t, only[*appsv1.DaemonSet](t, committedObjects(t)))
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the DaemonSet's container has no securityContext.capabilities: set the chart's capabilities")
	}
	if got := capNames(sc.Capabilities.Add); !slices.Equal(got, want) {
		t.Errorf("the DaemonSet adds capabilities %v, the systemd unit %v: make the chart's values.yaml capabilities equal %s's CapabilityBoundingSet", got, want, unitPath)
	}
	if got := capNames(sc.Capabilities.Drop); !slices.Equal(got, []string{"ALL"}) {
		t.Errorf("the DaemonSet drops %v, want [ALL]: the container runtime's defaults are not the daemon's", got)
	}
	// The API server refuses allowPrivilegeEscalation: false with
	// CAP_SYS_ADMIN (or privileged): such a DaemonSet would never apply.
	if slices.Contains(want, "SYS_ADMIN") && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is false beside CAP_SYS_ADMIN, which the API server refuses: set it true (the daemon sets no_new_privs itself)")
	}
}

// The pod is what the daemon needs on a node and no more: root with the
// capabilities above, a read-only root, the host's processes but its own
// network, the host's bpffs (pins survive the pod), tracefs and cgroups,
// its node's name, on every node.
func TestDaemonSetPod(t *testing.T) {
	ds := only[*appsv1.DaemonSet](t, committedObjects(t))
	pod := ds.Spec.Template.Spec
	c := daemonContainer(t, ds)
	sc := c.SecurityContext
	check := func(ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			t.Errorf(format, args...)
		}
	}
	check(pod.HostPID, "hostPID is false: the daemon must see the host's processes to find the pools")
	check(!pod.HostNetwork, "hostNetwork is true: the daemon needs no host network, and its port would open on the node")
	check(sc.RunAsUser != nil && *sc.RunAsUser == 0, "runAsUser is not 0: the daemon must start as root to load eBPF")
	check(sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem, "readOnlyRootFilesystem is not true: the daemon writes only to bpffs")
	check(sc.Privileged == nil || !*sc.Privileged, "the container is privileged by default: privileged must stay an opt-in value")
	check(slices.ContainsFunc(pod.Tolerations, func(t corev1.Toleration) bool {
		return t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == ""
	}), "no toleration {operator: Exists}: tainted nodes would run pools no daemon watches")
	check(slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}), "no NODE_NAME from spec.nodeName: the daemon cannot tell which node's pods are its")
	check(slices.Contains(c.Args, "--discover"), "the daemon's args %v lack --discover: it would watch no pool", c.Args)
	for _, m := range []struct {
		path     string
		readOnly bool
	}{{"/sys/fs/bpf", false}, {"/sys/kernel/tracing", true}, {"/sys/fs/cgroup", true}} {
		check(mountsHostPath(pod, c, m.path, m.readOnly), "%s is not mounted from the host at %s (readOnly %v)", m.path, m.path, m.readOnly)
	}
}

// mountsHostPath says whether c mounts the host's path at the same path,
// read-only as readOnly says.
func mountsHostPath(pod corev1.PodSpec, c corev1.Container, path string, readOnly bool) bool {
	for _, v := range pod.Volumes {
		if v.HostPath == nil || v.HostPath.Path != path {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name && m.MountPath == path && m.ReadOnly == readOnly {
				return true
			}
		}
	}
	return false
}

// The daemon's ServiceAccount may read pods, nothing else, and is bound
// to that role.
func TestServiceAccountReadsPodsOnly(t *testing.T) {
	objs := committedObjects(t)
	role := only[*rbacv1.ClusterRole](t, objs)
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}}
	if !slices.EqualFunc(role.Rules, want, func(a, b rbacv1.PolicyRule) bool { return fmt.Sprint(a) == fmt.Sprint(b) }) {
		t.Errorf("the ClusterRole's rules are %+v, want get, list, watch on pods alone", role.Rules)
	}
	binding := only[*rbacv1.ClusterRoleBinding](t, objs)
	ds := only[*appsv1.DaemonSet](t, objs)
	sa := only[*corev1.ServiceAccount](t, objs)
	if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != role.Name {
		t.Errorf("the ClusterRoleBinding binds %s %s, want ClusterRole %s", binding.RoleRef.Kind, binding.RoleRef.Name, role.Name)
	}
	if !slices.ContainsFunc(binding.Subjects, func(s rbacv1.Subject) bool {
		return s.Kind == "ServiceAccount" && s.Name == sa.Name && s.Namespace == sa.Namespace
	}) {
		t.Errorf("the ClusterRoleBinding's subjects %+v lack the ServiceAccount %s/%s", binding.Subjects, sa.Namespace, sa.Name)
	}
	if ds.Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Errorf("the DaemonSet runs as ServiceAccount %q, want %q", ds.Spec.Template.Spec.ServiceAccountName, sa.Name)
	}
}
