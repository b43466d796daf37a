package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// podClient lists and watches pods over the core API group's REST
// client, with a scheme of that group alone: client-go's typed clients
// register every API group, which would make the daemon's binary 40 MB
// larger for the one resource it reads.
type podClient struct {
	rest   *rest.RESTClient
	params runtime.ParameterCodec
}

func newPodClient(cfg *rest.Config) (*podClient, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("the core API group's types: %w", err)
	}
	metav1.AddToGroupVersion(scheme, corev1.SchemeGroupVersion)
	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = "workerstats"
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, err
	}
	return &podClient{rest: rc, params: runtime.NewParameterCodec(scheme)}, nil
}

// List lists the pods of every namespace that lo selects.
func (c *podClient) List(ctx context.Context, lo metav1.ListOptions) (*corev1.PodList, error) {
	out := &corev1.PodList{}
	err := c.rest.Get().Resource("pods").VersionedParams(&lo, c.params).Do(ctx).Into(out)
	return out, err
}

// Watch watches the pods of every namespace that lo selects.
func (c *podClient) Watch(ctx context.Context, lo metav1.ListOptions) (watch.Interface, error) {
	lo.Watch = true
	return c.rest.Get().Resource("pods").VersionedParams(&lo, c.params).Watch(ctx)
}
