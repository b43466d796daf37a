package observer

import "testing"

type namerFunc func(string) (Pod, bool)

func (f namerFunc) PodOf(id string) (Pod, bool) { return f(id) }

// A pool keeps its pod's names until it ends: once the namer forgets the
// pod (deleted longer ago than it remembers), the last names stay, marked
// deleted; a pod named again replaces them.
func TestPoolKeepsItsPodsName(t *testing.T) {
	known := map[string]Pod{"c1": {Namespace: "shop", Name: "web-1", Container: "app"}}
	namer := namerFunc(func(id string) (Pod, bool) { p, ok := known[id]; return p, ok })
	var n podName
	if got := n.of(nil, "c1"); got != nil {
		t.Errorf("no namer: %+v", got)
	}
	if got := n.of(namer, "c1"); got == nil || got.Name != "web-1" || got.Deleted {
		t.Fatalf("named: %+v", got)
	}
	delete(known, "c1")
	if got := n.of(namer, "c1"); got == nil || got.Name != "web-1" || got.Container != "app" || !got.Deleted {
		t.Errorf("forgotten by the namer: %+v, want web-1 marked deleted", got)
	}
	known["c2"] = Pod{Namespace: "shop", Name: "web-2", Container: "app"}
	if got := n.of(namer, "c2"); got == nil || got.Name != "web-2" || got.Deleted {
		t.Errorf("a new master's container: %+v, want web-2", got)
	}
}
