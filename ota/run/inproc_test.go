package run

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestShutdownLeavesTheProgramRunningForTheNextRun: Run's ctx ends (the agent shuts down) while
// the program runs; the program goes on, and the next Run in the same process inherits it.
func TestShutdownLeavesTheProgramRunningForTheNextRun(t *testing.T) {
	dir := t.TempDir()
	argv, count := counting(t, dir, "1")
	d := Durable{Spec: Spec{Argv: argv}, Status: filepath.Join(dir, "st"), Output: filepath.Join(dir, "out"), Poll: 50 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { waitFor(t, func() bool { return count() == 1 }); cancel() }()
	if _, err := d.Run(ctx); err == nil {
		t.Fatal("no error for a canceled run")
	}
	o, err := d.Run(context.Background())
	if err != nil || !o.Inherited || o.Code != 4 || count() != 1 {
		t.Fatalf("%+v %v runs %d", o, err, count())
	}
}
