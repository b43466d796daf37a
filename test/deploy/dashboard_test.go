package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/metrics"
)

// targetLabels are the labels Prometheus and the chart's ServiceMonitor
// give every series of a target, beside the daemon's own.
var targetLabels = []string{"job", "instance", "node", "namespace", "service", "pod", "container", "endpoint"}

// served is what the daemon's /metrics serves: each name a query may
// select (a histogram's _bucket, _sum and _count), and every label name.
type served struct {
	names  map[string]bool
	labels map[string]bool
}

// scrapeFixture is /metrics of the daemon's collector, with the daemon's
// pool labels, over one discovered pool whose dump is testdata/dump.json
// (every figure the dump can hold).
func scrapeFixture(t *testing.T) served {
	t.Helper()
	b, err := os.ReadFile("testdata/dump.json")
	if err != nil {
		t.Fatal(err)
	}
	var st observer.Stats
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("testdata/dump.json: %v", err)
	}
	pool := metrics.Pool{ID: "gunicorn-4e5f6a7b", Server: "gunicorn", Snapshot: func(context.Context) (*observer.Stats, error) { return &st, nil }}
	c := metrics.New(metrics.PoolLabels, func() []metrics.Pool { return []metrics.Pool{pool} }, slog.New(slog.DiscardHandler))
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	tp := expfmt.NewTextParser(model.UTF8Validation)
	families, err := tp.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse the scrape: %v", err)
	}
	s := served{names: map[string]bool{}, labels: map[string]bool{"__name__": true}}
	for name, f := range families {
		s.names[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			s.names[name+"_bucket"], s.names[name+"_sum"], s.names[name+"_count"] = true, true, true
			s.labels["le"] = true
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = true
			}
		}
	}
	for _, l := range targetLabels {
		s.labels[l] = true
	}
	requireEveryDescScraped(t, c, families)
	return s
}

// fqName picks a metric's name out of a descriptor's String().
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// requireEveryDescScraped fails when the fixture leaves a metric of the
// collector unserved, which the dashboard test could then not vouch for.
func requireEveryDescScraped[F any](t *testing.T, c prometheus.Collector, families map[string]F) {
	t.Helper()
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read a metric name from %s", d)
		}
		if _, ok := families[m[1]]; !ok {
			t.Errorf("the collector describes %s but testdata/dump.json gives it no series: add what it needs to the fixture", m[1])
		}
	}
}

// dashboardQuery is one query of the dashboard, and where it is.
type dashboardQuery struct{ where, expr string }

// dashboardQueries are every "expr" of the dashboard (panels, rows,
// targets, at any depth) and every query variable's query.
func dashboardQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	b, err := os.ReadFile(repoPath(dashboardPath))
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var qs []dashboardQuery
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				where = title
			}
			if e, ok := v["expr"].(string); ok {
				qs = append(qs, dashboardQuery{where, e})
			}
			for k, c := range v {
				if k != "templating" {
					walk(where, c)
				}
			}
		case []any:
			for _, c := range v {
				walk(where, c)
			}
		}
	}
	walk("", dash)
	return append(qs, variableQueries(t, dash)...)
}

// labelValues is Grafana's label_values(SELECTOR, LABEL).
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)

// variableQueries are the query variables' queries: label_values'
// selector and label, as the query {SELECTOR} by (LABEL) would use them.
func variableQueries(t *testing.T, dash map[string]any) []dashboardQuery {
	t.Helper()
	tmpl, _ := dash["templating"].(map[string]any)
	list, _ := tmpl["list"].([]any)
	var qs []dashboardQuery
	for _, v := range list {
		v, _ := v.(map[string]any)
		if v["type"] != "query" {
			continue
		}
		q, _ := v["query"].(string)
		if m, ok := v["query"].(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		where := fmt.Sprintf("variable %v", v["name"])
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("%s: query %q is not label_values(SELECTOR, LABEL): name the metric, so that it can be checked", where, q)
			continue
		}
		qs = append(qs, dashboardQuery{where, fmt.Sprintf("count by (%s) (%s)", m[2], m[1])})
	}
	return qs
}

// grafanaIntervals stand for Grafana's interval variables, for parsing.
var grafanaIntervals = strings.NewReplacer("${__rate_interval}", "5m", "$__rate_interval", "5m", "${__interval}", "1m", "$__interval", "1m", "${__range}", "1h", "$__range", "1h")

// Every PromQL expression of the dashboard parses, and selects only
// metrics and labels that the daemon's /metrics serves: a renamed metric
// or label would leave a panel silently empty.
func TestDashboardQueriesServedMetrics(t *testing.T) {
	s := scrapeFixture(t)
	qs := dashboardQueries(t)
	if len(qs) == 0 {
		t.Fatalf("%s has no queries", dashboardPath)
	}
	selected := map[string]bool{}
	for _, q := range qs {
		expr, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaIntervals.Replace(q.expr))
		if err != nil {
			t.Errorf("%s: %s: %q does not parse: %v", dashboardPath, q.where, q.expr, err)
			continue
		}
		for _, problem := range unserved(expr, s) {
			t.Errorf("%s: %s: %s", dashboardPath, q.where, problem)
		}
		for _, n := range metricNames(expr) {
			selected[n] = true
		}
	}
	t.Logf("%d queries parse, selecting %d served metrics", len(qs), len(selected))
}

// metricNames are the metric names expr selects.
func metricNames(expr parser.Expr) []string {
	var names []string
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, selectorName(vs))
		}
		return nil
	})
	return names
}

// selectorName is the metric name vs selects ("" for none).
func selectorName(vs *parser.VectorSelector) string {
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel {
			return m.Value
		}
	}
	return ""
}

// unserved says what expr selects that s does not serve: metrics, and
// labels in matchers and in by and without clauses.
func unserved(expr parser.Expr, s served) []string {
	var out []string
	label := func(l, where string) {
		if !s.labels[l] {
			out = append(out, fmt.Sprintf("label %q (%s) is on no series /metrics serves: use one of %v", l, where, slices.Sorted(maps.Keys(s.labels))))
		}
	}
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			name := selectorName(n)
			if !s.names[name] {
				out = append(out, fmt.Sprintf("metric %q is not one /metrics serves (see observer/metrics/descs.go, docs/metrics.md)", name))
			}
			for _, m := range n.LabelMatchers {
				label(m.Name, "matcher of "+name)
			}
		case *parser.AggregateExpr:
			for _, l := range n.Grouping {
				label(l, n.Op.String()+" by/without")
			}
		}
		return nil
	})
	return out
}

// The check above catches a dashboard that selects what is not served.
func TestUnservedMetricsAreCaught(t *testing.T) {
	s := scrapeFixture(t)
	for _, bad := range []string{
		`rate(workerstats_requests_totl[5m])`,
		`sum by (pool_id) (workerstats_worker_busy)`,
		`workerstats_up{namespce="x"}`,
		`workerstats_worker_busy_bucket`,
	} {
		expr, err := parser.NewParser(parser.Options{}).ParseExpr(bad)
		if err != nil {
			t.Fatalf("%q: %v", bad, err)
		}
		if len(unserved(expr, s)) == 0 {
			t.Errorf("%q passed as served", bad)
		}
	}
}
