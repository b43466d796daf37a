package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/workerstats/workerstats/statsock"
)

// readOptions are the flags of `workerstats read`, which the root command's
// --connect-and-read shares.
type readOptions struct {
	timeout time.Duration
	pretty  bool
}

func (o *readOptions) addFlags(f *pflag.FlagSet) {
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "give up after this long")
	f.BoolVar(&o.pretty, "pretty", false, "indent the JSON")
}

func newReadCmd() *cobra.Command {
	var o readOptions
	cmd := &cobra.Command{
		Use:   "read ADDR",
		Short: "Read a stats socket (ours or uWSGI's) and print the JSON on stdout",
		Long: `read connects to a stats socket, reads the dump to its end, checks it is JSON
and prints it on stdout. ADDR is any --stats form (host:port, [ipv6]:port,
/path.sock, @abstract) or an http:// URL of a server started with --stats-http
(with --discover: / for the list of pools, /pools/ID for one).
'workerstats --connect-and-read ADDR' does the same.`,
		Example: `  workerstats read 127.0.0.1:1717
  workerstats read /run/workerstats/app.sock
  workerstats read --pretty http://127.0.0.1:1717/
  workerstats read http://127.0.0.1:1717/pools/ID`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return readStatsTo(cmd.Context(), os.Stdout, args[0], o)
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// readStatsTo reads the dump at addr, checks it is JSON and writes it to w,
// ending in a newline.
func readStatsTo(ctx context.Context, w io.Writer, addr string, o readOptions) error {
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %v must be positive, such as 10s", o.timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	b, err := statsock.Read(ctx, addr)
	if err != nil {
		return err
	}
	if !json.Valid(b) {
		return fmt.Errorf("%s answered %d bytes that are not JSON (is it a stats socket? an HTTP-mode one needs an http:// URL)", addr, len(b))
	}
	if o.pretty {
		var out bytes.Buffer
		if err := json.Indent(&out, b, "", "  "); err != nil {
			return fmt.Errorf("indent the JSON from %s: %w", addr, err)
		}
		b = out.Bytes()
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write the stats: %w", err)
	}
	return nil
}
