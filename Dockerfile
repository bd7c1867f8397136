# The raftkv container image.
#
# Ordinary build (a Rust builder stage compiles the binary):
#   docker build -t raftkv:latest .
# From a binary built on the host (no Rust image or crate registry needed, only the
# runtime base image; this is what scripts/rehearse-docker.sh does):
#   cargo build --release --locked
#   docker build --target prebuilt -t raftkv:latest .
#   (--build-arg BINARY=path/in/context picks another binary)
# The base images are build args: RUNTIME_IMAGE (default debian:bookworm-slim) and
# BUILDER_IMAGE (default rust:1-bookworm). The host binary needs a glibc no newer
# than the runtime image's (build on Debian bookworm, or set RUNTIME_IMAGE).
#
# Ports:
#   7001/tcp  client gRPC: raftkv.v1.KeyValue, grpc.health.v1.Health, reflection
#   7100/tcp  peer gRPC: raftkv.v1.Raft (the StatefulSet's --peer-addr port)
#   5555/udp  controller bridge, only with --bridge-addr (unauthenticated; off by default)
# Data: /var/lib/raftkv (mount a volume there); runs as uid/gid 10001, never root.
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BUILDER_IMAGE=rust:1-bookworm

# The stages are ordered so that `--target prebuilt` never needs the builder image,
# with BuildKit or with the classic builder (which builds every stage up to the target).
FROM ${RUNTIME_IMAGE} AS runtime-base
RUN mkdir -p /var/lib/raftkv && chown 10001:10001 /var/lib/raftkv
WORKDIR /var/lib/raftkv
EXPOSE 7001/tcp 7100/tcp 5555/udp
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/raftkv"]
CMD ["--help"]

FROM runtime-base AS prebuilt
ARG BINARY=target/release/raftkv
COPY ${BINARY} /usr/local/bin/raftkv

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/raftkv

FROM runtime-base AS runtime
COPY --from=builder /src/target/release/raftkv /usr/local/bin/raftkv
