# mailfleet: one static-enough binary for the operator, the agent sidecar and
# the offline tools. Build: docker build -t mailfleet:0.1.0 .
# The runtime image has no shell and no package manager; it runs as the
# distroless `nonroot` user (65532), which the chart's securityContext expects.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Only what `cargo build` reads (.dockerignore keeps target/ and the rest out).
# benches/ is needed because Cargo.toml declares its targets; examples/fleet
# is embedded in the binary.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile dist --locked --bin mailfleet \
    && install -D -m 0755 target/dist/mailfleet /out/mailfleet

# glibc of Debian 12, like the builder; TLS is rustls, so no OpenSSL is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mailfleet" \
      org.opencontainers.image.description="Kubernetes operator that keeps outbound mail flowing when a mailbox provider blocks one of your source IPs" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/mailfleet /usr/local/bin/mailfleet
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mailfleet"]
CMD ["--help"]
