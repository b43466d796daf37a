// Package container tells which container, and which Kubernetes pod, a
// process runs in, from its cgroup: the path /proc/PID/cgroup gives, in
// the layouts Docker, containerd (under Kubernetes or not), CRI-O and
// Podman make, with the systemd and the cgroupfs drivers alike. It reads
// cgroup v2, v1 and hybrid hierarchies. A path of no known layout is
// still given as the cgroup, with no container ID: never an error.
//
// It is pure: Parse reads the file's bytes, and Read only opens the file.
package container

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Identity is who a process is, as its cgroup tells.
type Identity struct {
	// Cgroup is the process's cgroup path: the unified (v2) hierarchy's
	// where it has one below the root, else the v1 hierarchy's that says
	// most (see Parse).
	Cgroup string `json:"cgroup"`
	// Runtime made the container: docker, containerd, cri-o, podman, or
	// "" when the layout does not say (Kubernetes' cgroupfs driver names
	// a container by its ID alone).
	Runtime string `json:"runtime,omitempty"`
	// ID is the container's ID (64 hex digits), "" for a process in no
	// container of a known layout.
	ID string `json:"id,omitempty"`
	// PodUID is the Kubernetes pod's UID, and QoS its class (guaranteed,
	// burstable, besteffort), for a process in a pod.
	PodUID string `json:"pod_uid,omitempty"`
	QoS    string `json:"qos,omitempty"`
}

// InContainer reports whether the cgroup names a container or a pod.
func (id Identity) InContainer() bool { return id.ID != "" || id.PodUID != "" }

// maxFile bounds what Parse reads of a cgroup file: a real one is a few
// hundred bytes.
const maxFile = 64 << 10

// Read reads and parses the cgroup file of pid under procRoot (/proc on a
// host; a fixture tree in tests).
func Read(procRoot string, pid int) (Identity, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return Identity{}, fmt.Errorf("read the cgroup of pid %d: %w", pid, err)
	}
	return Parse(b), nil
}

// Parse reads a /proc/PID/cgroup file: lines of hierarchy-ID, controllers
// and path. The path it tells by is the first of: one that names a
// container or pod (any hierarchy: under cgroup v1 each controller has its
// own, and some may be left at the root), the unified hierarchy's ("0::"),
// the systemd hierarchy's (name=systemd), any other; "/" when none is
// below the root.
func Parse(b []byte) Identity {
	if len(b) > maxFile {
		b = b[:maxFile]
	}
	var unified, systemd, other string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxFile)
	for sc.Scan() {
		hier, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		controllers, path, ok := strings.Cut(rest, ":")
		if !ok || !strings.HasPrefix(path, "/") {
			continue
		}
		if id := FromPath(path); id.InContainer() {
			return id
		}
		switch {
		case hier == "0" && controllers == "":
			unified = below(unified, path)
		case controllers == "name=systemd":
			systemd = below(systemd, path)
		default:
			other = below(other, path)
		}
	}
	for _, p := range []string{unified, systemd, other} {
		if p != "" {
			return Identity{Cgroup: p}
		}
	}
	return Identity{Cgroup: "/"}
}

// below keeps had, or takes path if had is empty and path is below the root.
func below(had, path string) string {
	if had == "" && path != "/" {
		return path
	}
	return had
}

// FromPath tells the container and pod a cgroup path names. Its parts are
// read from the last up: the innermost container scope wins (Podman's
// "container" child of its scope, a pod's containers under the pod).
func FromPath(path string) Identity {
	id := Identity{Cgroup: path}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := len(parts) - 1; i >= 0; i-- {
		part := parts[i]
		if id.ID == "" {
			id.Runtime, id.ID = scope(part, parent(parts, i))
		}
		if id.PodUID == "" {
			id.PodUID, id.QoS = pod(part, parts[:i])
		}
	}
	if id.PodUID != "" && id.ID == "" {
		id.Runtime = "" // a pod's own cgroup, not one of its containers
	}
	return id
}

// parent is parts[i-1], or "".
func parent(parts []string, i int) string {
	if i == 0 {
		return ""
	}
	return parts[i-1]
}

// scopes are the systemd scope (or cgroupfs directory) prefixes each
// runtime names its containers' cgroups with. A runtime's monitor
// (conmon's "crio-conmon-", "libpod-conmon-") is not the container.
var scopes = []struct{ prefix, runtime string }{
	{"docker-", "docker"},
	{"cri-containerd-", "containerd"},
	{"containerd-", "containerd"},
	{"nerdctl-", "containerd"},
	{"crio-", "cri-o"},
	{"libpod-", "podman"},
}

// scope tells a container from one cgroup path part: "<prefix><id>.scope"
// (the systemd driver), "<prefix><id>" (Podman's cgroupfs), or a bare ID
// under a runtime's or Kubernetes' directory (cgroupfs: /docker/<id>,
// /kubepods/burstable/pod<uid>/<id>).
func scope(part, parentPart string) (runtime, id string) {
	name := strings.TrimSuffix(part, ".scope")
	for _, s := range scopes {
		rest, ok := strings.CutPrefix(name, s.prefix)
		if ok && isContainerID(rest) {
			return s.runtime, rest
		}
	}
	if !isContainerID(part) {
		return "", ""
	}
	switch {
	case parentPart == "docker":
		return "docker", part
	case parentPart == "libpod_parent":
		return "podman", part
	case strings.HasPrefix(parentPart, "pod") || strings.HasPrefix(parentPart, "kubepods"):
		return "", part // Kubernetes' cgroupfs driver: the runtime is not named
	}
	return "", ""
}

// isContainerID: 64 lower-case hex digits, as every runtime here names one.
func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// pod tells a Kubernetes pod from one cgroup path part, with the parts
// above it for its QoS class: "kubepods-besteffort-pod<uid>.slice",
// "kubepods-pod<uid>.slice" (guaranteed), with the UID's dashes as
// underscores (the systemd driver), or "pod<uid>" under
// kubepods/besteffort, kubepods/burstable or kubepods (cgroupfs).
func pod(part string, above []string) (uid, qos string) {
	if name, ok := strings.CutSuffix(part, ".slice"); ok {
		rest, ok := strings.CutPrefix(name, "kubepods-")
		if !ok {
			return "", ""
		}
		qos = "guaranteed"
		for _, q := range []string{"besteffort", "burstable"} {
			if r, ok := strings.CutPrefix(rest, q+"-"); ok {
				qos, rest = q, r
			}
		}
		u, ok := strings.CutPrefix(rest, "pod")
		u = strings.ReplaceAll(u, "_", "-")
		if !ok || !isPodUID(u) {
			return "", ""
		}
		return u, qos
	}
	u, ok := strings.CutPrefix(part, "pod")
	if !ok || !isPodUID(u) || len(above) == 0 {
		return "", ""
	}
	switch p := above[len(above)-1]; {
	case p == "besteffort" || p == "burstable":
		if len(above) >= 2 && above[len(above)-2] == "kubepods" {
			return u, p
		}
	case p == "kubepods":
		return u, "guaranteed"
	}
	return "", ""
}

// isPodUID: a UUID, 8-4-4-4-12 lower-case hex digits.
func isPodUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}
