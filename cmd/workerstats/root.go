package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/spf13/cobra"
)

const (
	logFormatText = "text"
	logFormatJSON = "json"
)

func newRootCmd() *cobra.Command {
	var (
		logLevel, logFormat string
		connectAndRead      string
		read                readOptions
	)
	root := &cobra.Command{
		Use:   "workerstats",
		Short: "See inside pre-fork worker pools, from outside, as uWSGI stats JSON",
		Long: `workerstats watches the workers of a pre-fork server (uWSGI, gunicorn,
PHP-FPM, nginx) from outside with eBPF, and serves per-worker counters as the
JSON of uWSGI's stats server, so uwsgitop, uwsgi_exporter and
'uwsgi --connect-and-read' read it unchanged.

'workerstats --connect-and-read ADDR' is 'workerstats read ADDR' under uWSGI's
name for it. Unlike uWSGI, which prints the JSON on stderr, it prints it on
stdout, so it pipes into jq; errors go to stderr.`,
		Example: `  workerstats serve --pid "$(pgrep -o uwsgi)" --stats 127.0.0.1:1717
  workerstats read 127.0.0.1:1717
  workerstats --connect-and-read 127.0.0.1:1717 --pretty`,
		Version:       version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			h, err := logHandler(logLevel, logFormat)
			if err != nil {
				return err
			}
			slog.SetDefault(slog.New(h))
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if connectAndRead == "" {
				if cmd.Flags().Changed("timeout") || cmd.Flags().Changed("pretty") {
					return errors.New("--timeout and --pretty go with --connect-and-read ADDR or the read command: workerstats read --pretty ADDR")
				}
				return cmd.Help()
			}
			return readStatsTo(cmd.Context(), os.Stdout, connectAndRead, read)
		},
	}
	root.SetVersionTemplate(fmt.Sprintf("{{.Name}} version {{.Version}} (%s %s/%s)\n", runtime.Version(), runtime.GOOS, runtime.GOARCH))
	pf := root.PersistentFlags()
	pf.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	pf.StringVar(&logFormat, "log-format", logFormatText, "log format on stderr: text (key=value lines) or json (one object a line)")
	f := root.Flags()
	f.StringVar(&connectAndRead, "connect-and-read", "", "read the stats socket ADDR and print its JSON on stdout, like 'workerstats read ADDR' (uWSGI's flag; uWSGI prints on stderr)")
	read.addFlags(f)
	root.AddCommand(newServeCmd(), newReadCmd(), newCleanupCmd(), newDemoCmd(), newDemoPoolCmd(), newTopCmd(), newGenDocsCmd())
	return root
}

// logHandler returns the slog handler on stderr that --log-level and
// --log-format ask for.
func logHandler(level, format string) (slog.Handler, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case logFormatText:
		return slog.NewTextHandler(logOutput, opts), nil
	case logFormatJSON:
		return slog.NewJSONHandler(logOutput, opts), nil
	default:
		return nil, fmt.Errorf("--log-format %q is not one of text, json", format)
	}
}
