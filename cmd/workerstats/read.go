package main

import (
	"context"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/workerstats/workerstats/statsock"
)

func newReadCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "read ADDR",
		Short: "Read a stats socket (ours or uWSGI's) and print the JSON on stdout",
		Example: `  workerstats read 127.0.0.1:1717
  workerstats read /run/workerstats/app.sock`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			b, err := statsock.Read(ctx, args[0])
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(b)
			return err
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "give up after this long")
	return cmd
}
