//go:build race

package statsock

// raceEnabled: the race detector makes the server's CPU work (copying
// large answers above all) several times slower; timing tests give it
// more room.
const raceEnabled = true
