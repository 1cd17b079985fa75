# Every target runs from a clean clone with only Go installed.
.DEFAULT_GOAL := help

BINARY             := bin/optipick-webhooks
STATICCHECK        := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME           ?= 30s
IMAGE              ?= optipick-webhooks:latest
GO_VERSION         := $(shell awk '/^go /{print $$2}' go.mod)

.PHONY: help demo run sim test build image lint fuzz bench loadtest chaos

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

demo: ## the whole flow offline: simulator + receiver, one cluster and one route optimization
	go run ./cmd/demo

run: ## run the receiver (reads .env if present)
	go run .

sim: ## run the offline OptiPick simulator on 127.0.0.1:8090 (reads .env too; retries at 0.1 scale; ARGS=...)
	go run ./cmd/optipick-sim $(ARGS)

test: ## go vet, then every test with the race detector
	go vet ./...
	go test -race ./...

build: ## build the receiver into bin/
	CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o $(BINARY) .

image: ## build the container image (IMAGE) with docker, or podman (docker format, keeping HEALTHCHECK)
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine="docker build"; \
	elif command -v podman >/dev/null; then engine="podman build --format docker"; \
	else echo "make image needs docker (with a running engine) or podman"; exit 1; fi; \
	echo "$$engine --build-arg GO_VERSION=$(GO_VERSION) -t $(IMAGE) ."; \
	$$engine --build-arg GO_VERSION=$(GO_VERSION) -t $(IMAGE) . && $${engine%% *} image ls $(IMAGE)

bench: ## Go benchmarks: verification vs a bare HMAC floor, the handler, decoding a 50 KiB result
	go test -run '^$$' -bench . -benchmem -count 5 .

loadtest: build ## the built receiver vs a bare baseline server on loopback (N=5000 C=64 ROUNDS=3)
	go run ./cmd/loadtest -receiver $(BINARY) -n $(or $(N),5000) -c $(or $(C),64) -rounds $(or $(ROUNDS),3)

chaos: ## 1,000 events through receiver kills, restarts and API outages; 0 lost or it fails (ARGS=-seed 7 ...)
	go run ./cmd/chaos $(ARGS)

fuzz: ## run each fuzz target for FUZZTIME (default 30s); the seeds also run in make test
	go test -run '^$$' -fuzz '^FuzzWebhook$$' -fuzztime $(FUZZTIME) .
	go test -run '^$$' -fuzz '^FuzzOptimizationURL$$' -fuzztime $(FUZZTIME) .

lint: ## gofmt check, go vet and staticcheck (pinned)
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	go run $(STATICCHECK) ./...
