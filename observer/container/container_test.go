package container

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	testID  = "3f1c9a0b7e2d4c5a8b6e9f0d1c2b3a4958677e6d5c4b3a291807f6e5d4c3b2a1"
	testPod = "8d2e6c1a-4b3f-4e5d-9a7c-1b2c3d4e5f60"
)

// Each fixture file gives the runtime, container and pod it was made for.
func TestParseFixtures(t *testing.T) {
	podSlice := "kubepods-burstable-pod" + strings.ReplaceAll(testPod, "-", "_") + ".slice"
	for _, c := range []struct {
		file string
		want Identity
	}{
		{"docker-systemd-v2.cgroup", Identity{Cgroup: "/system.slice/docker-" + testID + ".scope", Runtime: "docker", ID: testID}},
		{"docker-cgroupfs-v1.cgroup", Identity{Cgroup: "/docker/" + testID, Runtime: "docker", ID: testID}},
		{"k8s-containerd-systemd-besteffort-hybrid.cgroup", Identity{
			Cgroup:  "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(testPod, "-", "_") + ".slice/cri-containerd-" + testID + ".scope",
			Runtime: "containerd", ID: testID, PodUID: testPod, QoS: "besteffort"}},
		{"k8s-containerd-systemd-guaranteed-v2.cgroup", Identity{
			Cgroup:  "/kubepods.slice/kubepods-pod" + strings.ReplaceAll(testPod, "-", "_") + ".slice/cri-containerd-" + testID + ".scope",
			Runtime: "containerd", ID: testID, PodUID: testPod, QoS: "guaranteed"}},
		{"k8s-cgroupfs-burstable-v1.cgroup", Identity{Cgroup: "/kubepods/burstable/pod" + testPod + "/" + testID, ID: testID, PodUID: testPod, QoS: "burstable"}},
		{"k8s-crio-burstable-v2.cgroup", Identity{Cgroup: "/kubepods.slice/kubepods-burstable.slice/" + podSlice + "/crio-" + testID + ".scope",
			Runtime: "cri-o", ID: testID, PodUID: testPod, QoS: "burstable"}},
		// CRI-O's monitor is in the pod, not in its container.
		{"k8s-crio-conmon-v2.cgroup", Identity{Cgroup: "/kubepods.slice/kubepods-burstable.slice/" + podSlice + "/crio-conmon-" + testID + ".scope",
			PodUID: testPod, QoS: "burstable"}},
		{"podman-rootful-v2.cgroup", Identity{Cgroup: "/machine.slice/libpod-" + testID + ".scope/container", Runtime: "podman", ID: testID}},
		{"podman-rootless-v2.cgroup", Identity{Cgroup: "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + testID + ".scope", Runtime: "podman", ID: testID}},
		{"systemd-service-v2.cgroup", Identity{Cgroup: "/system.slice/uwsgi.service"}},
		{"hybrid-v1-memory-only.cgroup", Identity{Cgroup: "/process_api/54918a5cca7ae0ab40b0472159483a6f"}},
		{"root-v2.cgroup", Identity{Cgroup: "/"}},
		{"garbage.cgroup", Identity{Cgroup: "/"}},
	} {
		t.Run(c.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", c.file))
			if err != nil {
				t.Fatal(err)
			}
			if got := Parse(b); got != c.want {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

// Read takes the file under a proc root of the caller's choosing, and a
// missing process is an error, not an identity.
func TestRead(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "42")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::/system.slice/docker-"+testID+".scope\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id, err := Read(root, 42)
	if err != nil || id.ID != testID || id.Runtime != "docker" {
		t.Errorf("Read = %+v, %v; want docker %s", id, err, testID)
	}
	if _, err := Read(root, 43); err == nil {
		t.Error("a missing process read without error")
	}
	// This process's own cgroup reads, whatever layout the machine has.
	if _, err := Read("/proc", os.Getpid()); err != nil {
		t.Error(err)
	}
}

// Near misses name no container: an ID one digit short or in upper case,
// a pod UID that is not one, a runtime prefix on something else.
func TestNearMissesNameNothing(t *testing.T) {
	for _, p := range []string{
		"/system.slice/docker-" + testID[1:] + ".scope",
		"/system.slice/docker-" + strings.ToUpper(testID) + ".scope",
		"/system.slice/docker.service",
		"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podnot-a-uid.slice",
		"/kubepods/besteffort/podx/" + testID[:10],
		"/user.slice/" + testID, // a bare ID under no runtime's directory
	} {
		if id := FromPath(p); id.InContainer() {
			t.Errorf("%s: got %+v, want no container", p, id)
		}
	}
}

// Whatever the bytes, Parse returns an identity whose ID and pod UID are
// well-formed or empty, and a cgroup path; it never panics.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.cgroup")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id := Parse(b)
		if id.ID != "" && !isContainerID(id.ID) {
			t.Errorf("ID %q", id.ID)
		}
		if id.PodUID != "" && !isPodUID(id.PodUID) {
			t.Errorf("pod UID %q", id.PodUID)
		}
		if !strings.HasPrefix(id.Cgroup, "/") {
			t.Errorf("cgroup %q", id.Cgroup)
		}
	})
}
