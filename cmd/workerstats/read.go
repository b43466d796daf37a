package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/workerstats/workerstats/statsock"
)

func newReadCmd() *cobra.Command {
	var (
		timeout time.Duration
		pretty  bool
	)
	cmd := &cobra.Command{
		Use:   "read ADDR",
		Short: "Read a stats socket (ours or uWSGI's) and print the JSON on stdout",
		Long: `read connects to a stats socket, reads the dump to its end, checks it is JSON
and prints it on stdout. ADDR is any --stats form (host:port, [ipv6]:port,
/path.sock, @abstract) or an http:// URL of a server started with --stats-http.`,
		Example: `  workerstats read 127.0.0.1:1717
  workerstats read /run/workerstats/app.sock
  workerstats read --pretty http://127.0.0.1:1717/`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			b, err := statsock.Read(ctx, args[0])
			if err != nil {
				return err
			}
			if !json.Valid(b) {
				return fmt.Errorf("%s answered %d bytes that are not JSON (is it a stats socket? an HTTP-mode one needs an http:// URL)", args[0], len(b))
			}
			if pretty {
				var out bytes.Buffer
				if err := json.Indent(&out, b, "", "  "); err != nil {
					return err
				}
				b = out.Bytes()
			}
			if len(b) > 0 && b[len(b)-1] != '\n' {
				b = append(b, '\n')
			}
			_, err = os.Stdout.Write(b)
			return err
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "give up after this long")
	cmd.Flags().BoolVar(&pretty, "pretty", false, "indent the JSON")
	return cmd
}
