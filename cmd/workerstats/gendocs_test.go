package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func runGenDocs(t *testing.T, args ...string) error {
	t.Helper()
	root := newRootCmd()
	root.SetArgs(append([]string{"gen-docs"}, args...))
	root.SetOut(new(strings.Builder))
	root.SetErr(new(strings.Builder))
	return root.Execute()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A package's man pages come from the commands: one page per command a
// user runs (the hidden ones left out), each with its flags, dated by
// SOURCE_DATE_EPOCH so that a package build is reproducible.
func TestGenDocsManPages(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "86400")
	dir := t.TempDir()
	if err := runGenDocs(t, "--man", dir); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pages []string
	for _, e := range ents {
		pages = append(pages, e.Name())
	}
	for _, want := range []string{"workerstats.1", "workerstats-serve.1", "workerstats-read.1", "workerstats-top.1", "workerstats-cleanup.1", "workerstats-demo.1"} {
		if !slices.Contains(pages, want) {
			t.Errorf("no %s among %v", want, pages)
		}
	}
	for _, hidden := range []string{"workerstats-gen-docs.1", "workerstats-demo-pool.1"} {
		if slices.Contains(pages, hidden) {
			t.Errorf("%s written: hidden commands have no page", hidden)
		}
	}
	main := readFile(t, filepath.Join(dir, "workerstats.1"))
	if !strings.Contains(main, `.TH "WORKERSTATS" "1" "Jan 1970"`) {
		t.Errorf("workerstats.1 is not a section 1 page dated by SOURCE_DATE_EPOCH (Jan 1970):\n%.300s", main)
	}
	if strings.Contains(main, "Auto generated") {
		t.Error("workerstats.1 carries the generator's tag: its text would change with the generation date")
	}
	if serve := readFile(t, filepath.Join(dir, "workerstats-serve.1")); !strings.Contains(serve, `\fB--pidfile\fP`) || !strings.Contains(serve, `\fB--config\fP`) {
		t.Error("workerstats-serve.1 does not list serve's --pidfile and --config")
	}
}

// The completions are written where each shell looks for them, named as
// it wants, each completing the workerstats command.
func TestGenDocsCompletions(t *testing.T) {
	dir := t.TempDir()
	if err := runGenDocs(t, "--completions", dir); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"bash/workerstats":      "complete -o default -F __start_workerstats workerstats",
		"zsh/_workerstats":      "#compdef workerstats",
		"fish/workerstats.fish": "complete -c workerstats",
	} {
		if got := readFile(t, filepath.Join(dir, path)); !strings.Contains(got, want) {
			t.Errorf("%s lacks %q", path, want)
		}
	}
}

func TestGenDocsNeedsADirectory(t *testing.T) {
	err := runGenDocs(t)
	if err == nil || !strings.Contains(err.Error(), "give --man DIR, --completions DIR or both") {
		t.Errorf("gen-docs with no directory: %v, want an error saying what to give", err)
	}
}
