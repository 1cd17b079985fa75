# Every target runs from a clean clone with only Go installed (make test uses
# the race detector where cgo is enabled, which needs a C compiler).
.DEFAULT_GOAL := help

BINARY             := bin/optipick-webhooks
STATICCHECK        := honnef.co/go/tools/cmd/staticcheck@v0.8.2
ACTIONLINT         := github.com/rhysd/actionlint/cmd/actionlint@v1.7.12
GOVULNCHECK        := golang.org/x/vuln/cmd/govulncheck@v1.10.0
# make vulncheck's database: empty takes golang.org/x/vulndb from the Go module
# proxy (no vuln.go.dev needed); else a govulncheck -db URL (https://vuln.go.dev).
VULNDB             ?=
BENCHSTAT          := golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
# make bench runs each benchmark BENCHCOUNT times: benchstat needs 6 for a
# confidence interval of the median.
BENCHCOUNT         ?= 6
GREMLINS           := github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
# make mutate fails unless more than this percentage of the mutants that the
# tests reach are killed (gremlins' efficacy: killed / (killed + lived)).
# MUTATE_FLAGS adds gremlins flags, such as --diff main (only changed lines).
MUTATE_EFFICACY    ?= 92
MUTATE_FLAGS       ?=
# make repeat runs the root package's tests this many times over.
COUNT              ?= 3
FUZZTIME           ?= 30s
IMAGE              ?= optipick-webhooks:latest
# make image: empty PLATFORMS builds for this machine's platform; several,
# comma-separated, build a multi-arch image: a podman manifest list, or with
# docker buildx (needs a multi-platform builder; BUILDX_FLAGS=--push or --load
# says where the result goes). ENGINE=docker|podman overrides the detection;
# DRY_RUN=1 prints the command without running it.
PLATFORMS          ?=
ENGINE             ?=
BUILDX_FLAGS       ?=
# make image-offline: the CA bundle copied into the image (a scratch image has
# none), by default the first of Go's Linux locations that exists here (and
# macOS's /etc/ssl/cert.pem); and the build context it makes and empties.
CA_BUNDLE          ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt \
                      /etc/ssl/ca-bundle.pem /etc/pki/tls/cacert.pem /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem /etc/ssl/cert.pem))
OFFLINE_CONTEXT    ?= bin/image-offline
# Injected as main.version; empty (no git) injects nothing.
ifeq ($(origin VERSION),undefined)
VERSION            := $(shell git describe --tags --always --dirty 2>/dev/null)
endif
LDFLAGS            := -s -w$(if $(VERSION), -X main.version=$(VERSION))
# The Dockerfile's golang builder: go.mod's go line as major.minor (1.26), whose
# image tag is that minor's latest patch (never the go line's 1.26.0).
GO_VERSION         := $(shell awk '/^go /{split($$2, v, "."); print v[1] "." v[2]}' go.mod)
# The race detector needs cgo: used where go env says cgo is on (it is off
# without a C compiler, or with CGO_ENABLED=0 set, as for static builds).
RACE               := $(shell [ "$$(go env CGO_ENABLED)" = 1 ] && echo -race)

.PHONY: help demo run sim test repeat mutate build cross-check image image-offline lint vulncheck fuzz bench loadtest chaos

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

demo: ## the whole flow offline: simulator + receiver, one cluster and one route optimization
	go run ./cmd/demo

# The built binary, not go run: on Ctrl-C the receiver drains and exits 0,
# while go run would exit 1 and make would report "Error 1".
run: build ## build and run the receiver (reads .env if present; restart it after editing .env)
	$(BINARY)

sim: ## run the offline OptiPick simulator on 127.0.0.1:8090 (reads .env too; retries at 0.1 scale, none sooner than 2.5 s; ARGS=...)
	@mkdir -p bin
	go build -o bin/optipick-sim ./cmd/optipick-sim
	bin/optipick-sim $(ARGS)

test: ## go vet, then every test (with the race detector where cgo is on)
	@if [ -z "$(RACE)" ]; then echo "make test: cgo is off (CGO_ENABLED=0, or no C compiler), so no race detector"; fi
	go vet ./...
	go test $(RACE) ./...

repeat: ## the root package's tests COUNT (3) times over, -race where possible, so that a flaky test shows
	go test $(RACE) -count=$(COUNT) .

# The threshold goes in a config file: gremlins v0.6.0 ignores its
# --threshold-efficacy flag (go-gremlins/gremlins#216) and exits 0.
mutate: ## mutation testing (gremlins, pinned) of the receiver's own files; fails unless over MUTATE_EFFICACY (92) % killed
	@cfg=$$(mktemp); trap 'rm -f "$$cfg"' EXIT; \
	printf 'unleash:\n  threshold:\n    efficacy: %s\n' '$(MUTATE_EFFICACY)' > "$$cfg"; \
	echo "gremlins unleash: efficacy threshold $(MUTATE_EFFICACY) %"; \
	go run $(GREMLINS) unleash --config "$$cfg" $(MUTATE_FLAGS) \
		--exclude-files '^cmd/' --exclude-files '^internal/' --exclude-files '^e2e/' --exclude-files '^scripts/' .

build: ## build the receiver into bin/
	CGO_ENABLED=0 go build -trimpath -ldflags="$(LDFLAGS)" -o $(BINARY) .

cross-check: ## cross-build the static linux/arm64 binary; under qemu-aarch64-static, run it and probe /healthz
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 go build -trimpath -ldflags="$(LDFLAGS)" -o $(BINARY)-linux-arm64 .
	bash scripts/cross-check.sh $(BINARY)-linux-arm64

image: ## build the container image (IMAGE); PLATFORMS=linux/amd64,linux/arm64 for a multi-arch one
	@engine=$(ENGINE); \
	if [ -z "$$engine" ]; then \
		if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker; \
		elif command -v podman >/dev/null; then engine=podman; \
		else echo "make image needs docker (with a running engine) or podman"; exit 1; fi; \
	fi; \
	args="--build-arg GO_VERSION=$(GO_VERSION) --build-arg VERSION=$(VERSION)"; \
	case "$$engine,$(PLATFORMS)" in \
	docker,*,*) cmd="docker buildx build --platform $(PLATFORMS) $$args $(if $(BUILDX_FLAGS),$(BUILDX_FLAGS) )-t $(IMAGE) ." ;; \
	docker,*) cmd="docker build $(if $(PLATFORMS),--platform $(PLATFORMS) )$$args -t $(IMAGE) ." ;; \
	podman,*,*) cmd="podman build --format docker --platform $(PLATFORMS) $$args --manifest $(IMAGE) ."; \
		[ -n "$(DRY_RUN)" ] || ! podman manifest exists $(IMAGE) || podman manifest rm $(IMAGE) ;; \
	podman,*) cmd="podman build --format docker $(if $(PLATFORMS),--platform $(PLATFORMS) )$$args -t $(IMAGE) ." ;; \
	*) echo "ENGINE must be docker or podman"; exit 1 ;; \
	esac; \
	echo "$$cmd"; [ -z "$(DRY_RUN)" ] || exit 0; \
	$$cmd && $$engine image ls $(IMAGE)

# Containerfile.offline says why and what. The binary is built for linux
# (GOOS=linux: on macOS, for podman machine's VM) and the machine's GOARCH.
image-offline: ## the image without a registry: FROM scratch over make build's binary and this machine's CA bundle (IMAGE)
	@engine=$(ENGINE); \
	if [ -z "$$engine" ]; then \
		if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker; \
		elif command -v podman >/dev/null; then engine=podman; \
		else echo "make image-offline needs docker (with a running engine) or podman"; exit 1; fi; \
	fi; \
	case "$$engine" in podman) format="--format docker " ;; docker) format= ;; *) echo "ENGINE must be docker or podman"; exit 1 ;; esac; \
	if [ ! -s "$(CA_BUNDLE)" ]; then echo "make image-offline: no CA bundle at '$(CA_BUNDLE)': install ca-certificates, or set CA_BUNDLE=file.pem"; exit 1; fi; \
	$(MAKE) --no-print-directory build GOOS=linux || exit 1; \
	mkdir -p $(OFFLINE_CONTEXT) && cp $(BINARY) $(OFFLINE_CONTEXT)/optipick-webhooks && cp -L $(CA_BUNDLE) $(OFFLINE_CONTEXT)/ca-certificates.crt || exit 1; \
	cmd="$$engine build $$format-f Containerfile.offline -t $(IMAGE) $(OFFLINE_CONTEXT)"; \
	echo "$$cmd   (context: $(BINARY) and $(CA_BUNDLE))"; \
	$$cmd; status=$$?; \
	rm -f $(OFFLINE_CONTEXT)/optipick-webhooks $(OFFLINE_CONTEXT)/ca-certificates.crt; rmdir $(OFFLINE_CONTEXT) 2>/dev/null; \
	[ $$status = 0 ] && $$engine image ls $(IMAGE)

bench: ## Go benchmarks, BENCHCOUNT runs each into bin/bench.txt; prints benchstat's medians and the ratios to in-run baselines
	@mkdir -p bin
	@echo "go test -run '^\$$' -bench . -benchmem -count $(BENCHCOUNT) . > bin/bench.txt   (raw results; takes a minute or two)"
	@go test -run '^$$' -bench . -benchmem -count $(BENCHCOUNT) . > bin/bench.txt || { cat bin/bench.txt; exit 1; }
	@go run $(BENCHSTAT) bin/bench.txt
	@go run $(BENCHSTAT) -format csv bin/bench.txt 2>/dev/null | awk -f scripts/bench-ratios.awk

loadtest: build ## the built receiver vs a bare baseline server on loopback (N=5000 C=64 ROUNDS=5; METRICS=1 adds the receiver with metrics on)
	go run ./cmd/loadtest -receiver $(BINARY) -n $(or $(N),5000) -c $(or $(C),64) -rounds $(or $(ROUNDS),5) $(if $(METRICS),-metrics)

chaos: ## 1,000 events through receiver kills, restarts and API outages; 0 lost or it fails (ARGS=-seed 7 ...)
	go run ./cmd/chaos $(ARGS)

fuzz: ## run each fuzz target for FUZZTIME (default 30s); the seeds also run in make test
	go test -run '^$$' -fuzz '^FuzzWebhook$$' -fuzztime $(FUZZTIME) .
	go test -run '^$$' -fuzz '^FuzzOptimizationURL$$' -fuzztime $(FUZZTIME) .

lint: ## gofmt check, go vet, staticcheck and actionlint (pinned)
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	go run $(STATICCHECK) ./...
	go run $(ACTIONLINT)

vulncheck: ## govulncheck (pinned; database from the module proxy): a module's vulnerability fails, the local Go's are printed
	VULNDB='$(VULNDB)' bash scripts/vulncheck.sh $(GOVULNCHECK)
