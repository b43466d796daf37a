// Package deploy checks the Kubernetes deployment files against what they
// deploy: the Helm chart (deploy/helm/workerstats) renders objects that
// decode strictly into the Kubernetes API's and prometheus-operator's Go
// types, equal the committed plain manifests (deploy/kubernetes), and grant
// the daemon the systemd unit's capabilities, no more; the Grafana
// dashboard (deploy/grafana) queries, in PromQL that Prometheus parses,
// only metrics and labels that the daemon's /metrics serves.
//
// It is a Go module of its own, so that the Kubernetes and Prometheus
// modules stay out of the daemon's: `make check-deploy` runs it, with the
// pinned Helm in $HELM.
package deploy
