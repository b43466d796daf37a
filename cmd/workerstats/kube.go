package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/kube"
	"github.com/workerstats/workerstats/observer/metrics"
)

// kubeFlags are serve's flags for naming pools by their pods and for
// /metrics' labels.
type kubeFlags struct {
	kubeconfig string
	node       string
	labels     []string
}

func (k *kubeFlags) addFlags(f *pflag.FlagSet) {
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig of the API server that names pools by their pods; in a pod, its service account is used without it")
	f.StringVar(&k.node, "node-name", os.Getenv("NODE_NAME"), "this node's name in the cluster (default $NODE_NAME, which a DaemonSet sets from spec.nodeName): only its pods are watched")
	f.StringSliceVar(&k.labels, "metrics-labels", metrics.DefaultLabels, "labels of every pool's series on /metrics, among "+strings.Join(metrics.LabelNames(), ", "))
}

// applyConfig takes the config's keys, unless the command line set them.
func (k *kubeFlags) applyConfig(c configFile, changed func(string) bool) {
	if c.Kubeconfig != "" && !changed("kubeconfig") {
		k.kubeconfig = c.Kubeconfig
	}
	if c.NodeName != "" && !changed("node-name") {
		k.node = c.NodeName
	}
	if len(c.MetricsLabels) > 0 && !changed("metrics-labels") {
		k.labels = c.MetricsLabels
	}
}

// kubeOptions are kubeFlags resolved.
type kubeOptions struct {
	kubeconfig, node string
	labels           []metrics.Label
}

func (k kubeFlags) resolve() (kubeOptions, error) {
	labels, err := metrics.Select(k.labels)
	if err != nil {
		return kubeOptions{}, errors.New("--metrics-labels: " + err.Error())
	}
	if k.kubeconfig != "" {
		if _, err := os.Stat(k.kubeconfig); err != nil {
			return kubeOptions{}, errors.New("--kubeconfig: " + err.Error())
		}
	}
	return kubeOptions{kubeconfig: k.kubeconfig, node: k.node, labels: labels}, nil
}

// watchPods names pools by their pods where the daemon runs in a cluster
// (or is given a kubeconfig), until ctx ends; elsewhere, or when the
// client cannot be made, it says so once and returns nil: pools are
// named by their containers alone, as before.
func watchPods(ctx context.Context, o kubeOptions, log *slog.Logger) observer.PodNamer {
	log = log.With("component", "kube")
	pods, err := kube.Watch(ctx, kube.Options{Node: o.node, Kubeconfig: o.kubeconfig, Log: log})
	switch {
	case errors.Is(err, kube.ErrNoCluster):
		log.Info("pools are not named by Kubernetes pods", "why", err)
		return nil
	case err != nil:
		log.Warn("pools are not named by Kubernetes pods", "error", err)
		return nil
	}
	return pods
}
