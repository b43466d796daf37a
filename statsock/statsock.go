// Package statsock serves a stats dump the way uWSGI's stats server does:
// in raw mode a client connects and the server writes the JSON and closes;
// in HTTP mode it answers one bounded request. It knows nothing of where
// the bytes come from: a Source produces them, or for several pools on one
// socket a Catalog (catalog.go).
package statsock

import "context"

// Source produces the bytes of one dump.
type Source interface {
	Dump(ctx context.Context) ([]byte, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context) ([]byte, error)

// Dump implements Source.
func (f SourceFunc) Dump(ctx context.Context) ([]byte, error) { return f(ctx) }
