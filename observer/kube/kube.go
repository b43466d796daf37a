// Package kube names pools by their Kubernetes pods. On a node, the
// daemon watches the pods the API server schedules there (an informer
// limited to spec.nodeName), keeps of each only what names it, and finds
// a container's pod by the container's ID, which observer/container reads
// from a process's cgroup. A pod deleted is remembered for a while, so
// that a pool still shutting down keeps its name.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/workerstats/workerstats/observer"
)

// Options say which API server to ask, and for which node.
type Options struct {
	// Node is the node's name (the downward API's spec.nodeName, in
	// NODE_NAME): only its pods are watched.
	Node string
	// Kubeconfig is a kubeconfig file; "" takes the in-cluster config of
	// the daemon's own pod (its service account).
	Kubeconfig string
	// Forget is how long a deleted pod stays known (DefaultForget if 0).
	Forget time.Duration
	// Synced bounds the wait for the first list before the daemon says
	// the API server does not answer (DefaultSynced if 0); watching goes
	// on in the background either way.
	Synced time.Duration
	Log    *slog.Logger
}

// DefaultForget and DefaultSynced are Options' defaults.
const (
	DefaultForget = 10 * time.Minute
	DefaultSynced = 15 * time.Second
)

// ErrNoCluster says the daemon runs outside a cluster and was given no
// kubeconfig: pools are named by their containers only.
var ErrNoCluster = errors.New("not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST) and no --kubeconfig given")

// maxGone bounds the deleted pods' containers remembered: a node runs a
// few hundred pods at most, each with a few containers.
const maxGone = 4096

// Pods knows the node's pods by their containers' IDs. It implements
// observer.PodNamer.
type Pods struct {
	informer cache.SharedIndexInformer
	forget   time.Duration
	now      func() time.Time

	mu   sync.Mutex
	gone map[string]goneContainer // by container ID
}

type goneContainer struct {
	pod observer.Pod
	at  time.Time
}

// Watch starts watching the pods of o.Node until ctx ends. It returns at
// once; the API server's answer comes in the background, and
// until the first list PodOf knows no pod. An API server that does not
// answer within o.Synced is said once in the log, and so is its first
// answer after that.
func Watch(ctx context.Context, o Options) (*Pods, error) {
	// Outside a cluster first: a host with neither has no node name
	// either, and is not a mistake.
	cfg, err := restConfig(o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	if o.Node == "" {
		return nil, errors.New("the node's name is unknown: set NODE_NAME from the downward API (fieldRef spec.nodeName) or pass --node-name")
	}
	client, err := newPodClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("a Kubernetes client for %s: %w", cfg.Host, err)
	}
	return watchWith(ctx, client, o)
}

// podLister lists and watches pods: a podClient, or in tests a fake
// clientset's.
type podLister interface {
	List(ctx context.Context, lo metav1.ListOptions) (*corev1.PodList, error)
	Watch(ctx context.Context, lo metav1.ListOptions) (watch.Interface, error)
}

// watchWith is Watch with pods.
func watchWith(ctx context.Context, pods podLister, o Options) (*Pods, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Forget <= 0 {
		o.Forget = DefaultForget
	}
	if o.Synced <= 0 {
		o.Synced = DefaultSynced
	}
	klog.SetSlogLogger(slog.New(quiet{o.Log.Handler()}))
	onNode := fields.OneTermEqualSelector("spec.nodeName", o.Node).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, lo metav1.ListOptions) (runtime.Object, error) {
			lo.FieldSelector = onNode
			return pods.List(ctx, lo)
		},
		WatchFuncWithContext: func(ctx context.Context, lo metav1.ListOptions) (watch.Interface, error) {
			lo.FieldSelector = onNode
			return pods.Watch(ctx, lo)
		},
	}
	// A lister that cannot stream the first list as watch events (a
	// fake clientset's) says so, and is listed the old way.
	p := &Pods{informer: cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, pods), &corev1.Pod{}, 0, cache.Indexers{}),
		forget: o.Forget, now: time.Now, gone: map[string]goneContainer{}}
	if err := p.informer.SetTransform(trim); err != nil {
		return nil, fmt.Errorf("trim pods: %w", err)
	}
	if err := p.informer.AddIndexers(cache.Indexers{byContainer: containerIDs}); err != nil {
		return nil, fmt.Errorf("index pods by container: %w", err)
	}
	if _, err := p.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: p.remember}); err != nil {
		return nil, fmt.Errorf("follow deleted pods: %w", err)
	}
	errs := &watchErrors{log: o.Log}
	if err := p.informer.SetWatchErrorHandlerWithContext(errs.handle); err != nil {
		return nil, fmt.Errorf("report the API server's errors: %w", err)
	}
	go p.informer.RunWithContext(ctx)
	go p.sayWhenSynced(ctx, o, errs)
	return p, nil
}

// restConfig is the client configuration of kubeconfig, or in a pod its
// service account's.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("read kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, ErrNoCluster
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("the pod's service account: %w", err)
	}
	return cfg, nil
}

// sayWhenSynced logs once that the node's pods are known, and once if
// that takes longer than o.Synced.
func (p *Pods) sayWhenSynced(ctx context.Context, o Options, errs *watchErrors) {
	start := time.Now()
	wait, cancel := context.WithTimeout(ctx, o.Synced)
	synced := cache.WaitForCacheSync(wait.Done(), p.informer.HasSynced)
	cancel()
	if !synced {
		if ctx.Err() != nil {
			return
		}
		o.Log.Warn("the Kubernetes API server has not answered: pools are named by their containers only until it does",
			"node", o.Node, "waited", o.Synced, "error", errs.last())
		if !cache.WaitForCacheSync(ctx.Done(), p.informer.HasSynced) {
			return
		}
	}
	o.Log.Info("naming pools by their pods", "node", o.Node, "pods", len(p.informer.GetStore().ListKeys()),
		"took", time.Since(start).Round(time.Millisecond))
}

// watchErrors keeps the API server's last error for the log, which says
// it once (sayWhenSynced) rather than at every retry.
type watchErrors struct {
	log *slog.Logger
	mu  sync.Mutex
	err error
}

func (w *watchErrors) handle(ctx context.Context, _ *cache.Reflector, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
	w.log.Debug("the Kubernetes API server's watch of the node's pods failed; retrying", "error", err)
}

func (w *watchErrors) last() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// PodOf implements observer.PodNamer: the pod of the container of ID id
// (64 hex digits), live or deleted less than Options.Forget ago.
func (p *Pods) PodOf(id string) (observer.Pod, bool) {
	if id == "" {
		return observer.Pod{}, false
	}
	objs, err := p.informer.GetIndexer().ByIndex(byContainer, id)
	if err == nil && len(objs) > 0 {
		if pod, ok := objs[0].(*corev1.Pod); ok {
			return named(pod, id), true
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.gone[id]
	if !ok || p.now().Sub(g.at) > p.forget {
		return observer.Pod{}, false
	}
	return g.pod, true
}

// remember keeps a deleted pod's containers for Options.Forget, and
// forgets those remembered longer.
func (p *Pods) remember(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	ids, _ := containerIDs(pod)
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for id, g := range p.gone {
		if now.Sub(g.at) > p.forget {
			delete(p.gone, id)
		}
	}
	for _, id := range ids {
		if len(p.gone) >= maxGone {
			break
		}
		named := named(pod, id)
		named.Deleted = true
		p.gone[id] = goneContainer{pod: named, at: now}
	}
}

// byContainer indexes pods by their containers' IDs.
const byContainer = "container-id"

// containerIDs are the IDs of pod's containers, init and ephemeral ones
// included, without their runtime's prefix ("containerd://", "cri-o://",
// "docker://").
func containerIDs(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	var ids []string
	for _, s := range statuses(pod) {
		if id := bareID(s.ContainerID); id != "" {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// statuses are all of pod's container statuses.
func statuses(pod *corev1.Pod) []corev1.ContainerStatus {
	all := append([]corev1.ContainerStatus{}, pod.Status.ContainerStatuses...)
	all = append(all, pod.Status.InitContainerStatuses...)
	return append(all, pod.Status.EphemeralContainerStatuses...)
}

// bareID is a status's container ID without its runtime's prefix.
func bareID(s string) string {
	if _, id, ok := strings.Cut(s, "://"); ok {
		return id
	}
	return s
}

// named is what the dump says of pod, for its container of ID id.
func named(pod *corev1.Pod, id string) observer.Pod {
	out := observer.Pod{Namespace: pod.Namespace, Name: pod.Name, Owner: owner(pod)}
	for _, s := range statuses(pod) {
		if bareID(s.ContainerID) == id {
			out.Container = s.Name
		}
	}
	return out
}

// quiet is a log handler that takes every record as Debug: what the
// Kubernetes client logs itself (its retries, say) goes to the daemon's
// log at debug level, and the daemon says what matters once
// (sayWhenSynced).
type quiet struct{ slog.Handler }

func (q quiet) Enabled(ctx context.Context, _ slog.Level) bool {
	return q.Handler.Enabled(ctx, slog.LevelDebug)
}

func (q quiet) Handle(ctx context.Context, r slog.Record) error {
	r.Level = slog.LevelDebug
	return q.Handler.Handle(ctx, r)
}

func (q quiet) WithAttrs(attrs []slog.Attr) slog.Handler { return quiet{q.Handler.WithAttrs(attrs)} }
func (q quiet) WithGroup(name string) slog.Handler       { return quiet{q.Handler.WithGroup(name)} }
