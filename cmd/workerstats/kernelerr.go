package main

import (
	"errors"
	"fmt"

	"github.com/workerstats/workerstats/observer/ebpfkernel"
)

// settingError says which flag to change for an error of the kernel side,
// whose messages name none, and reports whether the error is a setting to
// fix (fatal in every mode) rather than a kernel that cannot load the
// programs (a reason to serve from procfs).
func settingError(err error) (setting bool, _ error) {
	var pe *ebpfkernel.PinPathError
	switch {
	case errors.As(err, &pe):
		return true, fmt.Errorf("--pin-path %s: %w; or pass --no-pin", pe.Path, pe.Err)
	case errors.Is(err, ebpfkernel.ErrNoSockTracepoints):
		return true, fmt.Errorf("--hooks sock: %w: use --hooks syscall or auto", err)
	case errors.Is(err, ebpfkernel.ErrNoBTF):
		return false, fmt.Errorf("%w: or serve what procfs shows with --mode procfs", err)
	}
	return false, err
}

// checkHooks validates --hooks.
func checkHooks(hooks string) error {
	if err := ebpfkernel.CheckHooks(hooks); err != nil {
		return fmt.Errorf("--hooks %w", err)
	}
	return nil
}
