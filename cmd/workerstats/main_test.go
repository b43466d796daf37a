package main

import (
	"testing"

	"github.com/workerstats/workerstats/test/harness"
)

// TestMain builds the workerstats binary once for the tests that run it
// (or takes the one testutil.BinaryEnv names): harness.Binary.
func TestMain(m *testing.M) { harness.Main(m) }
