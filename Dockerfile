# syntax=docker/dockerfile:1
# The receiver as a small, non-root, static container: make image.

# Keep in step with the go line of go.mod (make image passes it).
ARG GO_VERSION=1.26

# Fully qualified, so that podman needs no registry alias.
FROM docker.io/library/golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, in their own layer: source edits do not download again.
COPY go.mod go.sum ./
RUN go mod download
COPY *.go ./
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/optipick-webhooks .

# Static binary, CA certificates, tzdata, /tmp and a nonroot user (65532):
# no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/optipick-webhooks /optipick-webhooks
USER nonroot
EXPOSE 8080
ENV LOG_FORMAT=json
# The image has no shell or curl: the binary probes its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["/optipick-webhooks", "-healthcheck"]
ENTRYPOINT ["/optipick-webhooks"]
