package top

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// TestModelKeepsTheLastViewWhenTheSocketFails: the live view shows each
// dump it reads; when a read fails it keeps the last one and says why in
// one line; a sort key reorders and q quits.
func TestModelKeepsTheLastViewWhenTheSocketFails(t *testing.T) {
	dumps := []string{
		`{"pid":1,"workers":[{"id":1,"pid":11,"requests":10,"rss":1},{"id":2,"pid":12,"requests":10,"rss":2}]}`,
		`{"pid":1,"workers":[{"id":1,"pid":11,"requests":30,"rss":1},{"id":2,"pid":12,"requests":11,"rss":2}]}`,
	}
	reads := 0
	read := func(context.Context, string) ([]byte, error) {
		reads++
		if reads > len(dumps) {
			return nil, fmt.Errorf("connect: %w", syscall.ECONNREFUSED)
		}
		return []byte(dumps[reads-1]), nil
	}
	m := &model{o: Options{Addr: "127.0.0.1:1717", Interval: time.Second, Read: read}, ctx: context.Background()}
	m.Update(tea.WindowSizeMsg{Width: 100, Height: 12})
	for range 3 {
		if _, cmd := m.Update(m.Init()()); cmd == nil {
			t.Fatal("no next read scheduled")
		}
	}
	screen := m.View()
	if !strings.Contains(screen, "cannot read 127.0.0.1:1717: connection refused — is the daemon running? (showing ") {
		t.Errorf("no error line:\n%s", screen)
	}
	one, two := rowOf(screen, 1), rowOf(screen, 2)
	if one == "" || two == "" || !strings.Contains(one, "11") {
		t.Errorf("the last view is gone:\n%s", screen)
	}
	m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{'r'}})
	screen = m.View()
	if strings.Index(screen, one) > strings.Index(screen, two) || !strings.Contains(screen, "(now req/s ↓)") {
		t.Errorf("after r, slot 1 (faster) is not first:\n%s", screen)
	}
	m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{'r'}})
	if screen = m.View(); strings.Index(screen, rowOf(screen, 1)) < strings.Index(screen, rowOf(screen, 2)) {
		t.Errorf("after r again, slot 1 is still first:\n%s", screen)
	}
	for _, k := range []tea.KeyMsg{{Type: tea.KeyRunes, Runes: []rune{'q'}}, {Type: tea.KeyCtrlC}} {
		if _, cmd := m.Update(k); cmd == nil || !errors.Is(errorOf(cmd()), errQuit) {
			t.Errorf("%v does not quit", k)
		}
	}
}

var errQuit = errors.New("quit")

// errorOf maps bubbletea's quit message to errQuit.
func errorOf(msg tea.Msg) error {
	if _, ok := msg.(tea.QuitMsg); ok {
		return errQuit
	}
	return nil
}
