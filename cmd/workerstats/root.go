package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:   "workerstats",
		Short: "See inside pre-fork worker pools, from outside, as uWSGI stats JSON",
		Long: `workerstats watches the workers of a pre-fork server (uWSGI, gunicorn,
PHP-FPM, nginx) from outside with eBPF, and serves per-worker counters as the
JSON of uWSGI's stats server, so uwsgitop, uwsgi_exporter and
'uwsgi --connect-and-read' read it unchanged.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(newServeCmd(), newReadCmd())
	return root
}
