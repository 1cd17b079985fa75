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

// optionalParts are the root files a copier may delete, each with its test
// file: the rest must build, vet and pass its tests without them.
var optionalParts = []string{"metrics", "connlimit"}

// TestRootFilesCopyIntoAnEmptyModule copies the root *.go files with
// go.mod and go.sum into an empty directory, and runs go vet and go test
// there: they must stand alone, needing neither the simulator, nor e2e,
// nor root. It does so again without each optional part, and without both.
func TestRootFilesCopyIntoAnEmptyModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and tests copies of the module: not in -short")
	}
	files, err := filepath.Glob("../*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no root .go files: %v", err)
	}
	for _, left := range [][]string{nil, {"metrics"}, {"connlimit"}, optionalParts} {
		name := "all"
		if left != nil {
			name = "without " + strings.Join(left, ".go and ") + ".go"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range append(files, "../go.mod", "../go.sum") {
				part := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(f), ".go"), "_test")
				if !slices.Contains(left, part) {
					copyFile(t, f, filepath.Join(dir, filepath.Base(f)))
				}
			}
			goCommand(t, dir, "vet", "./...")
			goCommand(t, dir, "test", "-count=1", "./...")
			if slices.Contains(left, "metrics") {
				assertMetricsAddrIsRefused(t, dir)
			}
		})
	}
}

// assertMetricsAddrIsRefused builds the copy in dir, which has no
// metrics.go, and starts it with METRICS_ADDR set: it must refuse to start,
// saying why, rather than serve without the metrics asked for.
func assertMetricsAddrIsRefused(t *testing.T, dir string) {
	t.Helper()
	binary := filepath.Join(dir, "receiver")
	goCommand(t, dir, "build", "-o", binary, ".")
	cmd := exec.Command(binary)
	cmd.Dir = dir
	cmd.Env = []string{
		"WEBHOOK_SECRET=" + testSecret,
		"OPTIPICK_API_KEY=" + testAPIKey,
		"PORT=0",
		"METRICS_ADDR=127.0.0.1:0",
	}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "error: METRICS_ADDR: ") || !strings.Contains(string(out), "metrics.go") {
		t.Errorf("a build without metrics.go, with METRICS_ADDR set: %v\n%s\nwant a startup error naming the variable and the file",
			err, out)
	}
}

// TestTheREADMECopyBlockBuildsInAForeignModule runs the README's copy
// block with sh, as a copier would: a module of another name, the files
// its cp line names (every root .go file), the versions its go get line
// pins, before anything tidies. The result must build and vet, and keep the
// pinned svix-webhooks, not the older version the proxy calls latest.
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
	if !regexp.MustCompile(`(?m)^cp optipick-webhooks/\*\.go \.$`).MatchString(block) {
		t.Fatalf("the README's copy block does not copy every root .go file (cp optipick-webhooks/*.go .):\n%s", block)
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
	script := "set -eu\n" + strings.TrimSpace(block) + "\ngo vet ./...\ngo list -m github.com/svix/svix-webhooks\n"
	cmd := exec.Command("sh", "-c", script)
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
