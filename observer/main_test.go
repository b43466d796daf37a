package observer

import (
	"os"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil/forkpool"
)

func TestMain(m *testing.M) {
	forkpool.Run()
	os.Exit(m.Run())
}
