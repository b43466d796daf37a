package observer

import "sync"

// Pod is the Kubernetes pod a pool runs in, as the API server names it
// (workerstats; see observer/kube).
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Container is the container's name in the pod.
	Container string `json:"container"`
	// Owner is what made the pod (a Deployment through its ReplicaSet, a
	// StatefulSet, a DaemonSet, a Job...), nil for a pod made alone.
	Owner *Owner `json:"owner,omitempty"`
	// Deleted: the API server no longer has the pod, whose pool has not
	// ended yet (it is shutting down, say). The names are its last.
	Deleted bool `json:"deleted,omitempty"`
}

// Owner is the controller of a pod.
type Owner struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// PodNamer finds the pod of a container by the container's ID (the 64
// hex digits its cgroup names). ok is false for a container of no pod the
// namer knows, or while it has not learnt the node's pods yet.
type PodNamer interface {
	PodOf(containerID string) (pod Pod, ok bool)
}

// podName is one pool's pod, sticky: once named, a pool keeps its pod's
// names until it ends, marked deleted when the namer forgets the pod.
type podName struct {
	mu   sync.Mutex
	last *Pod
}

// of is the pod of containerID by namer (nil: no namer), or nil.
func (n *podName) of(namer PodNamer, containerID string) *Pod {
	if namer == nil || containerID == "" {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if pod, ok := namer.PodOf(containerID); ok {
		n.last = &pod
	} else if n.last != nil && !n.last.Deleted {
		gone := *n.last
		gone.Deleted = true
		n.last = &gone
	}
	return n.last
}
