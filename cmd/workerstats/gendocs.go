package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// The man pages and shell completions a package installs are generated
// from the commands themselves, so they never drift from the flags:
// `workerstats gen-docs --man DIR --completions DIR` (hidden; make deb
// runs it). SOURCE_DATE_EPOCH, when set, dates the man pages, so a
// package build is reproducible.

// completionFiles are the completion scripts gen-docs writes, by their
// path under --completions DIR: the directory layout and names each shell
// looks for (the same as under /usr/share, so a package copies them as
// they are).
var completionFiles = map[string]func(*cobra.Command, io.Writer) error{
	"bash/workerstats":      func(c *cobra.Command, f io.Writer) error { return c.GenBashCompletionV2(f, true) },
	"zsh/_workerstats":      func(c *cobra.Command, f io.Writer) error { return c.GenZshCompletion(f) },
	"fish/workerstats.fish": func(c *cobra.Command, f io.Writer) error { return c.GenFishCompletion(f, true) },
}

func newGenDocsCmd() *cobra.Command {
	var manDir, completionDir string
	cmd := &cobra.Command{
		Use:    "gen-docs [--man DIR] [--completions DIR]",
		Short:  "Write the man pages and the bash, zsh and fish completions (for packaging)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if manDir == "" && completionDir == "" {
				return errors.New("nothing to write: give --man DIR, --completions DIR or both")
			}
			root := cmd.Root()
			if manDir != "" {
				if err := genManPages(root, manDir); err != nil {
					return err
				}
			}
			if completionDir != "" {
				return genCompletions(root, completionDir)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&manDir, "man", "", "write a section 1 man page per command into DIR")
	cmd.Flags().StringVar(&completionDir, "completions", "", "write the completions into DIR/bash, DIR/zsh and DIR/fish")
	return cmd
}

// genManPages writes root's man pages (hidden commands left out) into dir.
func genManPages(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	root.DisableAutoGenTag = true
	header := &doc.GenManHeader{
		Title:   "WORKERSTATS",
		Section: "1",
		Source:  "workerstats " + version,
		Manual:  "workerstats manual",
	}
	if err := doc.GenManTree(root, header, dir); err != nil {
		return fmt.Errorf("man pages in %s: %w", dir, err)
	}
	return nil
}

// genCompletions writes root's completion scripts under dir.
func genCompletions(root *cobra.Command, dir string) error {
	for name, gen := range completionFiles {
		if err := writeCompletion(root, filepath.Join(dir, name), gen); err != nil {
			return err
		}
	}
	return nil
}

func writeCompletion(root *cobra.Command, path string, gen func(*cobra.Command, io.Writer) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("completion: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("completion: %w", err)
	}
	if err := gen(root, f); err != nil {
		f.Close()
		return fmt.Errorf("completion %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("completion %s: %w", path, err)
	}
	return nil
}
