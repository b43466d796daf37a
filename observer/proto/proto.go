// Package proto reads the first bytes of a request and of its response, as
// the kernel side captures them from a worker's accepted connection: HTTP/1.0
// and 1.1, the uwsgi protocol, and FastCGI. Every function is a pure function
// of its bytes: the bytes come from anyone who can reach the observed server,
// so nothing here keeps state, allocates beyond what it returns, or reads
// past the slice, whatever the input (FuzzParse).
//
// A capture is a bounded prefix (a request head, say 512 bytes): a head cut
// by the bound is still parsed, as far as it goes, and marked Truncated.
package proto

// Kind is a connection's protocol, told from its first request's bytes.
type Kind uint8

const (
	// Unknown is traffic of no protocol here (TLS, HTTP/2, anything
	// binary): counted by bytes and connections, never parsed.
	Unknown Kind = iota
	HTTP
	UWSGI
	FastCGI
)

func (k Kind) String() string {
	switch k {
	case HTTP:
		return "http"
	case UWSGI:
		return "uwsgi"
	case FastCGI:
		return "fastcgi"
	}
	return "unknown"
}

// Var is one of a request's variables, as uWSGI shows them in a core's
// "vars": CGI names (REQUEST_METHOD, HTTP_HOST...) and their values.
type Var struct {
	Key, Value string
}

// Request is what a request's head says.
type Request struct {
	Kind Kind
	// Complete says the head ended within the capture: for HTTP the blank
	// line after the headers, for uwsgi the whole vars packet, for
	// FastCGI the empty PARAMS record. A connection that closes before
	// its head is complete sent no request.
	Complete bool
	// Truncated says the capture ended inside the head.
	Truncated bool
	// Vars in the order the request gave them; for HTTP the CGI variables
	// uWSGI's http-socket derives, in its order (REQUEST_METHOD,
	// PATH_INFO, REQUEST_URI, QUERY_STRING, SERVER_PROTOCOL, then HTTP_*
	// for each header), less those the bytes do not say (SCRIPT_NAME,
	// SERVER_NAME, SERVER_PORT, REMOTE_ADDR).
	Vars []Var
}

// Var returns the value of variable key, or "".
func (r Request) Var(key string) string {
	for _, v := range r.Vars {
		if v.Key == key {
			return v.Value
		}
	}
	return ""
}

// Detect tells a connection's protocol from the first bytes it received.
// It needs only a few bytes, and says Unknown for fewer than it needs.
func Detect(b []byte) Kind {
	switch {
	case isHTTPRequest(b):
		return HTTP
	case isFastCGIBegin(b):
		return FastCGI
	case isUWSGIPacket(b):
		return UWSGI
	}
	return Unknown
}

// ParseRequest reads a request head of kind k from b.
func ParseRequest(k Kind, b []byte, truncated bool) Request {
	var r Request
	switch k {
	case HTTP:
		r = parseHTTPRequest(b)
	case UWSGI:
		r = parseUWSGI(b)
	case FastCGI:
		r = parseFastCGIParams(b)
	default:
		return Request{}
	}
	r.Kind = k
	r.Truncated = truncated && !r.Complete
	return r
}

// Status reads the HTTP status of a response of kind k from its first
// bytes: an HTTP status line (HTTP, and uwsgi, whose servers answer in
// HTTP), or FastCGI's STDOUT headers, where no Status header means 200.
// ok is false when b does not say yet (or ever).
func Status(k Kind, b []byte) (status int, ok bool) {
	switch k {
	case HTTP, UWSGI:
		return httpStatus(b)
	case FastCGI:
		return fastCGIStatus(b)
	}
	return 0, false
}

// Secret says a variable's value carries credentials (cookies, HTTP
// authorization): it is never shown, in any protocol's vars.
func Secret(key string) bool {
	switch key {
	case "HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION":
		return true
	}
	return false
}
