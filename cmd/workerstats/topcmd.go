package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/charmbracelet/x/term"
	"github.com/spf13/cobra"

	"github.com/workerstats/workerstats/cmd/workerstats/top"
	"github.com/workerstats/workerstats/statsock"
)

// topOptions are the flags of `workerstats top`.
type topOptions struct {
	interval time.Duration
	once     bool
	width    int
}

func newTopCmd() *cobra.Command {
	var o topOptions
	cmd := &cobra.Command{
		Use:   "top [ADDR]",
		Short: "A live terminal view of a stats socket (ours or uWSGI's): a row per worker",
		Long: `top reads a stats socket every --interval and shows the pool in the terminal:
its listen queue and queue wait, one row per worker (slot, pid, status,
requests per second, average and p99 time, 5xx, rss, the current request and
how long it has run), and the last exits. ADDR is any form read takes, and
defaults to ` + defaultStatsAddr + `. Keys: w p r t m s sort (again: reverse), q quits.
Without a terminal, --once prints one frame.`,
		Example: `  workerstats top
  workerstats top /run/workerstats/app.sock
  workerstats top --once 127.0.0.1:1717 | less
  workerstats top http://127.0.0.1:1717/pools/ID   # a pool of serve --discover`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			addr := defaultStatsAddr
			if len(args) == 1 {
				addr = args[0]
			}
			return runTop(cmd.Context(), addr, o)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.interval, "interval", time.Second, "how often to read the stats socket")
	f.BoolVar(&o.once, "once", false, "print one frame on stdout and exit (works without a terminal)")
	f.IntVar(&o.width, "width", 0, "with --once: the frame's width (default: the terminal's, or 160)")
	return cmd
}

// runTop runs the live view of addr on the terminal, or prints one frame.
func runTop(ctx context.Context, addr string, o topOptions) error {
	if o.interval < 100*time.Millisecond {
		return fmt.Errorf("--interval %v: want at least 100ms, such as 1s", o.interval)
	}
	opts := top.Options{Addr: addr, Interval: o.interval, Read: statsock.Read}
	if o.once {
		w := o.width
		if w <= 0 {
			w = 160
			if tw, _, err := term.GetSize(os.Stdout.Fd()); err == nil && tw > 0 {
				w = tw
			}
		}
		return top.Once(ctx, os.Stdout, opts, w)
	}
	if !isTerminal(os.Stdout) || !isTerminal(os.Stdin) {
		return errors.New("top needs a terminal: use 'workerstats read " + addr + "' for the JSON, or 'workerstats top --once' for one frame")
	}
	return top.Run(ctx, opts)
}

// isTerminal says f is a terminal.
func isTerminal(f *os.File) bool { return term.IsTerminal(f.Fd()) }
