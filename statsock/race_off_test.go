//go:build !race

package statsock

// raceEnabled: see race_on_test.go.
const raceEnabled = false
