# The kafka-direct container image.
#
#   docker build -t kafka-direct:0.1.0 .
#   buildah bud --format docker -t kafka-direct:0.1.0 .    # --format docker keeps HEALTHCHECK
#
# The build stage compiles the release binary with the official Rust image (every
# dependency from crates.io, versions from Cargo.lock); the runtime stage is distroless
# (glibc, libgcc, CA certificates for TLS, no shell), running as the non-root user
# 65532. The image runs
#
#   kafka-direct run --config /etc/kafka-direct/kafka-direct.toml --log-format json
#
# so mount a config file there (deploy/helm/kafka-direct renders one); any other
# subcommand can be given instead, e.g. `docker run --rm kafka-direct:0.1.0 --version`.
# The config should set `data.dir = "/data"`, the volume below, and `api.listen =
# "0.0.0.0:8083"`: the default, 127.0.0.1:8083, is not reachable from outside the
# container.

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads: Cargo needs the test and benchmark sources that Cargo.toml
# declares, even when it does not build them.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY tests tests
COPY benches benches
COPY config config
RUN cargo build --release --locked --bin kafka-direct \
    && install -D -m 0755 target/release/kafka-direct /out/kafka-direct \
    && mkdir /out/data \
    && /out/kafka-direct --version \
    && /out/kafka-direct validate --config config/example.toml > /dev/null

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="kafka-direct" \
      org.opencontainers.image.description="Replicates Kafka topics from an external cluster into an internal one, exactly once per source offset" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/kafka-direct /usr/local/bin/kafka-direct
# data.dir, writable by the non-root user.
COPY --from=build --chown=65532:65532 /out/data/ /data/
USER 65532:65532
VOLUME ["/data"]
# api.listen
EXPOSE 8083
# The image has no shell and no HTTP client, and kafka-direct has no subcommand that
# calls /health. `connectors list` is the nearest: it calls GET /connectors on the API
# and exits non-zero when the API does not answer, or answers with an error. It reads
# the token from KAFKA_DIRECT_API_TOKEN, as the service does (a token given only in the
# config file, e.g. as ${file:...}, is not seen here: set the variable, or override the
# check with `docker run --health-cmd`). It assumes the API on port 8083. Kubernetes
# ignores HEALTHCHECK: the Helm chart probes /health and /ready itself.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/kafka-direct", "connectors", "list", "--api", "127.0.0.1:8083"]
ENTRYPOINT ["/usr/local/bin/kafka-direct"]
CMD ["run", "--config", "/etc/kafka-direct/kafka-direct.toml", "--log-format", "json"]
