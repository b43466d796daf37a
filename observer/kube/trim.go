package kube

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/workerstats/workerstats/observer"
)

// templateHash is the label a Deployment's ReplicaSet puts on its pods,
// whose value ends the ReplicaSet's name.
const templateHash = "pod-template-hash"

// trim keeps of a pod, as it arrives, only what names it and its
// containers: a node's pods then cost the daemon a few hundred bytes each
// (their specs, annotations and managed fields can run to tens of
// kilobytes).
func trim(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a deleted object's tombstone, say
	}
	kept := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
	}}
	if h, ok := pod.Labels[templateHash]; ok {
		kept.Labels = map[string]string{templateHash: h}
	}
	if c := metav1.GetControllerOfNoCopy(pod); c != nil {
		kept.OwnerReferences = []metav1.OwnerReference{{Kind: c.Kind, Name: c.Name, Controller: c.Controller}}
	}
	kept.Status.ContainerStatuses = trimStatuses(pod.Status.ContainerStatuses)
	kept.Status.InitContainerStatuses = trimStatuses(pod.Status.InitContainerStatuses)
	kept.Status.EphemeralContainerStatuses = trimStatuses(pod.Status.EphemeralContainerStatuses)
	return kept, nil
}

func trimStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(in))
	for i, s := range in {
		out[i] = corev1.ContainerStatus{Name: s.Name, ContainerID: s.ContainerID}
	}
	return out
}

// owner is what made pod: its controller, or for a ReplicaSet a
// Deployment made, the Deployment (its name is the ReplicaSet's less the
// pod-template-hash suffix, so the daemon needs no access to
// ReplicaSets). nil for a pod made alone.
func owner(pod *corev1.Pod) *observer.Owner {
	c := metav1.GetControllerOfNoCopy(pod)
	if c == nil {
		return nil
	}
	if h := pod.Labels[templateHash]; c.Kind == "ReplicaSet" && h != "" {
		if name, ok := strings.CutSuffix(c.Name, "-"+h); ok && name != "" {
			return &observer.Owner{Kind: "Deployment", Name: name}
		}
	}
	return &observer.Owner{Kind: c.Kind, Name: c.Name}
}
