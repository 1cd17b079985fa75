package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestRootFilesCopyIntoAnEmptyModule copies the root *.go files with
// go.mod and go.sum into an empty directory, and runs go vet and go test
// there: they must stand alone, needing neither the simulator, nor e2e,
// nor root.
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
		copyFile(t, f, filepath.Join(dir, filepath.Base(f)))
	}
	for _, args := range [][]string{{"vet", "./..."}, {"test", "-count=1", "./..."}} {
		goCommand(t, dir, args...)
	}
}

// TestTheREADMECopyBlockBuildsInAForeignModule runs the README's copy
// block, as a copier would: a module of another name, the files its cp
// line names (which must be every root .go file that is not a test), the
// versions its go get line pins. The result must build and vet, and keep
// the pinned svix-webhooks, not the older version the proxy calls latest.
func TestTheREADMECopyBlockBuildsInAForeignModule(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches modules and builds a copy: not in -short")
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, found := strings.Cut(string(readme), "<!-- copy-block")
	block, _, _ = strings.Cut(block, "\n```\n")
	_, block, fenced := strings.Cut(block, "```sh\n")
	if !found || !fenced {
		t.Fatal("README has no copy block: <!-- copy-block ... --> then a ```sh fence")
	}
	lines := strings.Split(strings.TrimSpace(block), "\n")

	var listed []string
	for _, line := range lines {
		if m := regexp.MustCompile(`^cp optipick-webhooks/\{([a-z_,]+)\}\.go \.$`).FindStringSubmatch(line); m != nil {
			for _, name := range strings.Split(m[1], ",") {
				listed = append(listed, name+".go")
			}
		}
	}
	var service []string
	files, _ := filepath.Glob("../*.go")
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			service = append(service, filepath.Base(f))
		}
	}
	slices.Sort(listed)
	if !slices.Equal(listed, service) {
		t.Fatalf("the README's cp line names %v; the service's files are %v", listed, service)
	}

	// The copier's module, with the clone beside its files as the cp line
	// expects (a nested module, which ./... leaves out).
	dir := t.TempDir()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(root, filepath.Join(dir, "optipick-webhooks")); err != nil {
		t.Fatal(err)
	}
	script := "set -eu\n" + strings.Join(lines, "\n") + "\ngo vet ./...\ngo list -m github.com/svix/svix-webhooks\n"
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's copy block, in a new module: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "github.com/svix/svix-webhooks v1.99.1") {
		t.Errorf("svix-webhooks is not the pinned v1.99.1:\n%s", out)
	}
	if mod, _ := os.ReadFile(filepath.Join(dir, "go.mod")); !strings.Contains(string(mod), "module example.com/") {
		t.Errorf("the copy's module is not a foreign one:\n%s", mod)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func goCommand(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %v in a copy of the root files: %v\n%s", args, err, out)
	}
}
