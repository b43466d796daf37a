package userspace

import (
	"testing"

	"github.com/workerstats/workerstats/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
