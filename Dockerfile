# syntax=docker/dockerfile:1
# The receiver as a small, non-root, static container, for linux/amd64 and
# linux/arm64: make image (PLATFORMS=linux/amd64,linux/arm64 for both).

# The major.minor of go.mod's go line (make image and release.yml pass it):
# golang:1.26-bookworm is the latest 1.26 patch, where 1.26.0 would be the first.
ARG GO_VERSION=1.26

# The builder runs on the build machine's own platform and cross-compiles for
# the target one (pure Go, CGO_ENABLED=0): an arm64 image builds on amd64 in
# seconds, without emulation. Fully qualified, so that podman needs no
# registry alias.
FROM --platform=$BUILDPLATFORM docker.io/library/golang:${GO_VERSION}-bookworm AS build
# Set by BuildKit and podman from --platform; empty means the builder's own.
ARG TARGETOS
ARG TARGETARCH
# The version the binary reports (make image passes git describe's).
ARG VERSION=
WORKDIR /src
# Modules first, in their own layer: source edits do not download again.
COPY go.mod go.sum ./
RUN go mod download
COPY *.go ./
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH CGO_ENABLED=0 \
    go build -trimpath -ldflags="-s -w${VERSION:+ -X main.version=$VERSION}" -o /out/optipick-webhooks .

# Static binary, CA certificates, tzdata, /tmp and a nonroot user (65532):
# no shell, no package manager. Pulled for the target platform.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/optipick-webhooks /optipick-webhooks
USER nonroot
EXPOSE 8080
ENV LOG_FORMAT=json
# The image has no shell or curl: the binary probes its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["/optipick-webhooks", "-healthcheck"]
ENTRYPOINT ["/optipick-webhooks"]
