package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/spf13/cobra"

	"github.com/workerstats/workerstats/observer/ebpfkernel"
)

func newCleanupCmd() *cobra.Command {
	var (
		pinPath string
		all     bool
	)
	cmd := &cobra.Command{
		Use:   "cleanup [--pin-path DIR | --all]",
		Short: "Remove the kernel maps and links a stopped daemon left pinned",
		Long: `A stopped 'workerstats serve' leaves its eBPF maps and links pinned in bpffs,
so the kernel goes on counting and a restart loses nothing. cleanup removes
them: the programs are detached and the counts are gone. It refuses while a
daemon runs with those pins. It needs root.`,
		Example: `  workerstats cleanup
  workerstats cleanup --pin-path /sys/fs/bpf/workerstats/app
  workerstats cleanup --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dirs := []string{pinPath}
			if all {
				if cmd.Flags().Changed("pin-path") {
					return errors.New("--all and --pin-path exclude each other")
				}
				var err error
				if dirs, err = ebpfkernel.PinDirs(); err != nil {
					return cleanupError(ebpfkernel.DefaultPinRoot, err)
				}
				if len(dirs) == 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "nothing is pinned under %s\n", ebpfkernel.DefaultPinRoot)
					return nil
				}
			}
			return cleanup(cmd.OutOrStdout(), dirs)
		},
	}
	f := cmd.Flags()
	f.StringVar(&pinPath, "pin-path", ebpfkernel.DefaultPinPath, "the daemon's --pin-path")
	f.BoolVar(&all, "all", false, "every daemon's pins under "+ebpfkernel.DefaultPinRoot)
	return cmd
}

// cleanup removes the pins in each of dirs. It goes on past a directory
// it cannot clean (a daemon still runs with it, say), so that one running
// daemon keeps only its own pins, and returns those directories' errors.
func cleanup(out io.Writer, dirs []string) error {
	var errs lineErrors
	for _, dir := range dirs {
		n, err := ebpfkernel.RemovePins(dir)
		switch {
		case errors.Is(err, ebpfkernel.ErrNothingPinned):
			fmt.Fprintf(out, "nothing is pinned in %s\n", dir)
		case err != nil:
			errs = append(errs, cleanupError(dir, err))
		default:
			fmt.Fprintf(out, "removed %d pinned objects from %s: the programs are detached and the maps freed\n", n, dir)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// lineErrors are several errors said on one line.
type lineErrors []error

func (e lineErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e lineErrors) Unwrap() []error { return e }

func cleanupError(dir string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("remove the pins in %s: %w: run workerstats cleanup as root", dir, err)
	}
	return err
}
