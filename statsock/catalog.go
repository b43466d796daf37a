package statsock

import (
	"context"
	"strings"
)

// Catalog is several pools served on one HTTP stats socket (serve
// --discover): GET / answers the JSON list of them, GET /pools/ID each
// one's dump, as uWSGI's stats server would answer for that pool alone.
type Catalog interface {
	// List returns the JSON list of the pools.
	List(ctx context.Context) ([]byte, error)
	// Pool returns the source of pool id's dump; false when there is no
	// such pool.
	Pool(id string) (Source, bool)
}

// PoolsPrefix starts a catalog pool's path: /pools/ID.
const PoolsPrefix = "/pools/"

// source is the dump path serves, false for none: Source at /, or with a
// Catalog its list at / and a pool's dump at /pools/ID.
func (s *Server) source(path string) (Source, bool) {
	if s.Catalog == nil {
		return s.Source, path == "/"
	}
	if path == "/" {
		return SourceFunc(s.Catalog.List), true
	}
	id, ok := strings.CutPrefix(path, PoolsPrefix)
	if !ok || id == "" || strings.Contains(id, "/") {
		return nil, false
	}
	return s.Catalog.Pool(id)
}
