package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestRootFilesCopyIntoAnEmptyModule copies what the README invites people
// to copy, the root *.go files with go.mod and go.sum, into an empty
// directory, and runs go vet and go test there: they must stand alone,
// needing neither the simulator, nor e2e, nor root.
func TestRootFilesCopyIntoAnEmptyModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and tests a copy of the module: not in -short")
	}
	dir := t.TempDir()
	files, err := filepath.Glob("../*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no root .go files: %v", err)
	}
	for _, f := range append(files, "../go.mod", "../go.sum") {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{{"vet", "./..."}, {"test", "-count=1", "./..."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v in a copy of the root files: %v\n%s", args, err, out)
		}
	}
}
