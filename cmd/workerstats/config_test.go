package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// An unknown key names every key the file takes, from the structs that
// read it: none is left out of the message when one is added.
func TestConfigUnknownKeyListsEveryKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "workerstats.toml")
	if err := os.WriteFile(path, []byte("max-tranfsers = 3\n[[pool]]\npid = 1\nstats = \"127.0.0.1:1717\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadConfig(path)
	if err == nil {
		t.Fatal("an unknown key was accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, "unknown key max-tranfsers") {
		t.Errorf("the message %q does not name the unknown key", msg)
	}
	for _, typ := range []reflect.Type{reflect.TypeOf(configFile{}), reflect.TypeOf(poolOptions{})} {
		for i := range typ.NumField() {
			key, _, _ := strings.Cut(typ.Field(i).Tag.Get("toml"), ",")
			if key == "pool" {
				continue
			}
			if !strings.Contains(msg, " "+key+",") && !strings.Contains(msg, " "+key+")") {
				t.Errorf("the message leaves out the key %q: %s", key, msg)
			}
		}
	}
	if !strings.Contains(msg, "max-transfers") || !strings.Contains(msg, "capture-ring") {
		t.Errorf("the message leaves out max-transfers or capture-ring: %s", msg)
	}
}
