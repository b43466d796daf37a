package top

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// Options say what top reads and how often.
type Options struct {
	Addr     string
	Interval time.Duration
	// Read reads one dump from a stats socket (statsock.Read).
	Read func(ctx context.Context, addr string) ([]byte, error)
	// In and Out are the terminal; nil for stdin and stdout.
	In  io.Reader
	Out io.Writer
}

// Run shows the live view until q or Ctrl-C is pressed or ctx ends.
func Run(ctx context.Context, o Options) error {
	opts := []tea.ProgramOption{tea.WithContext(ctx), tea.WithAltScreen()}
	if o.In != nil {
		opts = append(opts, tea.WithInput(o.In))
	}
	if o.Out != nil {
		opts = append(opts, tea.WithOutput(o.Out))
	}
	_, err := tea.NewProgram(&model{o: o, ctx: ctx}, opts...).Run()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		return nil // ctx ended it: not an error of top's
	}
	if err != nil {
		return fmt.Errorf("top: %w", err)
	}
	return nil
}

// Once reads two dumps an interval apart (for the rates) and writes one
// frame of width w, every row shown, to out.
func Once(ctx context.Context, out io.Writer, o Options, w int) error {
	first, err := read(ctx, o)
	if err != nil {
		return errors.New(ErrorLine(o.Addr, err))
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.Interval):
	}
	cur, err := read(ctx, o)
	if err != nil {
		return errors.New(ErrorLine(o.Addr, err))
	}
	f := NewFrame(first, cur, cur.At)
	v := View{Addr: o.Addr, Frame: &f, Width: w, Height: -1}
	_, err = fmt.Fprintln(out, v.Render())
	return err
}

// read reads and parses one dump, within the interval or 5 s.
func read(ctx context.Context, o Options) (Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, max(o.Interval, 5*time.Second))
	defer cancel()
	b, err := o.Read(ctx, o.Addr)
	at := time.Now()
	if err != nil {
		return Sample{}, err
	}
	d, err := Parse(b)
	if err != nil {
		return Sample{}, err
	}
	return Sample{Dump: d, At: at}, nil
}

// ErrorLine says in one line why addr could not be read.
func ErrorLine(addr string, err error) string {
	why := err.Error()
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		why = "connection refused — is the daemon running?"
	case errors.Is(err, os.ErrNotExist):
		why = "no such socket — is the daemon running?"
	case errors.Is(err, context.DeadlineExceeded):
		why = "no answer in time"
	}
	return fmt.Sprintf("cannot read %s: %s", addr, why)
}

// model is the bubbletea model: the last two samples, the last error, the
// terminal's size and the order.
type model struct {
	o             Options
	ctx           context.Context
	prev, cur     Sample
	frame         *Frame
	err           string
	order         Order
	width, height int
}

type (
	sampleMsg Sample
	errMsg    struct{ err error }
	tickMsg   struct{}
)

func (m *model) Init() tea.Cmd { return m.fetch }

// fetch reads a dump.
func (m *model) fetch() tea.Msg {
	s, err := read(m.ctx, m.o)
	if err != nil {
		return errMsg{err}
	}
	return sampleMsg(s)
}

// next schedules the read after this one.
func (m *model) next() tea.Cmd {
	return tea.Tick(m.o.Interval, func(time.Time) tea.Msg { return tickMsg{} })
}

func (m *model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		return m, m.key(msg)
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tickMsg:
		return m, m.fetch
	case sampleMsg:
		m.prev, m.cur, m.err = m.cur, Sample(msg), ""
		f := NewFrame(m.prev, m.cur, m.cur.At)
		m.frame = &f
		return m, m.next()
	case errMsg:
		m.err = ErrorLine(m.o.Addr, msg.err)
		if m.frame != nil {
			m.err += " (showing " + m.frame.Now.Format("15:04:05") + ")"
		}
		return m, m.next()
	}
	return m, nil
}

// key quits on q, Esc or Ctrl-C and sorts on a sort key.
func (m *model) key(k tea.KeyMsg) tea.Cmd {
	switch k.String() {
	case "q", "esc", "ctrl+c":
		return tea.Quit
	}
	if r := k.Runes; len(r) == 1 {
		m.order, _ = m.order.Press(r[0])
	}
	return nil
}

func (m *model) View() string {
	return View{Addr: m.o.Addr, Frame: m.frame, Order: m.order, Err: m.err, Width: m.width, Height: m.height}.Render()
}
