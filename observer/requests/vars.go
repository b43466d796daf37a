package requests

import (
	"fmt"
	"strings"

	"github.com/workerstats/workerstats/observer/proto"
)

// Vars says which of a request's variables a dump shows.
// Credentials (proto.Secret) are never kept.
type Vars uint8

const (
	// AllVars keeps every variable but credentials, as uWSGI shows them.
	AllVars Vars = iota
	// NoQuery also leaves out query strings: QUERY_STRING goes, and
	// REQUEST_URI and HTTP_REFERER are cut at their '?'.
	NoQuery
	// NoVars keeps none: a core shows only that its worker is in a
	// request, and since when.
	NoVars
)

var varsNames = []string{AllVars: "all", NoQuery: "no-query", NoVars: "none"}

func (v Vars) String() string { return varsNames[v] }

// ParseVars reads a Vars by its name: all, no-query or none.
func ParseVars(s string) (Vars, error) {
	for i, n := range varsNames {
		if s == n {
			return Vars(i), nil
		}
	}
	return 0, fmt.Errorf("%q is not one of all, no-query, none", s)
}

// keep returns what v keeps of vars, in their order.
func (v Vars) keep(vars []proto.Var) []proto.Var {
	if v == NoVars {
		return nil
	}
	out := make([]proto.Var, 0, len(vars))
	for _, x := range vars {
		if proto.Secret(x.Key) {
			continue
		}
		if v == NoQuery {
			switch x.Key {
			case "QUERY_STRING":
				continue
			case "REQUEST_URI", "HTTP_REFERER":
				x.Value, _, _ = strings.Cut(x.Value, "?")
			}
		}
		out = append(out, x)
	}
	return out
}
