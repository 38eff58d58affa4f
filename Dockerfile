#
# Hearth's container image: a release build in the official Rust image, then a small
# Debian runtime with the binary, a non-root user and the data directory as a volume.
#
# Build for the machine you are on:
#   docker build -t hearth:latest .
# Build for a Raspberry Pi / Odroid (arm64) and a PC (amd64) at once:
#   docker buildx build --platform linux/arm64,linux/amd64 -t registry.example/hearth:latest --push .
#
# Multi-arch: every stage is built *for* the target platform (no `--platform=$BUILDPLATFORM`
# on the builder), so there is no cross toolchain to set up. Two ways work:
#   * natively on each architecture (e.g. `docker build` on the Pi itself, or one buildx
#     node per architecture), which is fast;
#   * buildx on one machine with QEMU user emulation (`docker run --privileged --rm
#     tonistiigi/binfmt --install arm64`), which needs no arm64 hardware but is slow: the
#     first build compiles RocksDB's C++ under emulation and can take an hour or more.
# Without a registry, `--platform linux/arm64 -o type=docker,dest=hearth-arm64.tar` gives
# a tarball to copy to a node and import (k3s: `k3s ctr images import hearth-arm64.tar`).
#
# The same runtime layout can be produced without Docker: scripts/build-rootfs.sh.
# Lint: scripts/lint-dockerfile.sh. Kubernetes manifests: deploy/kubernetes/.
#
# The NFS volume provisioner (crates/nfs-provisioner, deploy/kubernetes/nfs-provisioner) is
# the `provisioner` target of this file, for the same two architectures, the same way:
#   docker buildx build --platform linux/arm64,linux/amd64 --target provisioner \
#     -t registry.example/hearth-nfs-provisioner:latest --push .
# It needs neither RocksDB nor the homeserver's code, so it builds in minutes even under
# QEMU. A build without --target gives Hearth's image: BuildKit (Docker's default builder
# since 23.0) builds only the stages the target needs, so the provisioner's are skipped.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# libclang: bindgen generates RocksDB's Rust bindings at build time. The rust image
# (buildpack-deps) already has g++ and make for RocksDB's C++, and curl. valgrind, on amd64
# only: scripts/build-release.sh lists the code a start runs and links it together (the
# arm64 linker cannot order functions, so there it would go unused).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev \
    && if [ "$(dpkg --print-architecture)" = amd64 ]; then \
         apt-get install -y --no-install-recommends valgrind; fi \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Layer 1, dependencies only: the manifests plus a stub main, so that the slow part
# (RocksDB's C++, SQLite, ruma, …) lands in a cached layer that is rebuilt only when
# Cargo.toml or Cargo.lock change. Plain layers rather than BuildKit cache mounts, so the
# cache also works when it is exported to a registry (`--cache-to`), as in CI.
COPY Cargo.toml Cargo.lock ./
COPY crates/hearth/Cargo.toml crates/hearth/build.rs crates/hearth/
RUN mkdir -p crates/hearth/src \
    && echo 'fn main() {}' > crates/hearth/src/main.rs \
    && cargo build --release --locked -p hearth \
    && rm -rf crates/hearth/src

# Layer 2, Hearth itself. COPY keeps the files' old modification times, so `touch` tells
# cargo that our crate changed since the stub was built. scripts/build-release.sh is the
# release build bench/run.sh measures: on amd64 it builds, lists the functions a start runs,
# and links again with them together (see crates/hearth/build.rs).
COPY scripts/build-release.sh scripts/startup-order.sh scripts/
COPY crates/hearth/src crates/hearth/src
RUN touch crates/hearth/src/main.rs \
    && CARGO_TARGET_DIR=/src/target bash scripts/build-release.sh --out /out/hearth \
    && /out/hearth --version

# ---------------------------------------------------------------------------------------
# hearth-nfs-provisioner: pure Rust (rustls with ring, no OpenSSL, no C++), so the builder
# needs nothing beyond the Rust image. Cargo reads every workspace member's manifest, so
# Hearth's is copied too (with a stub main, never built).
FROM ${RUST_IMAGE} AS provisioner-builder

WORKDIR /src

# Layer 1, dependencies only (kube, k8s-openapi, tokio, …), as for Hearth above.
COPY Cargo.toml Cargo.lock ./
COPY crates/hearth/Cargo.toml crates/hearth/build.rs crates/hearth/
COPY crates/nfs-provisioner/Cargo.toml crates/nfs-provisioner/
RUN mkdir -p crates/hearth/src crates/nfs-provisioner/src \
    && echo 'fn main() {}' > crates/hearth/src/main.rs \
    && echo 'fn main() {}' > crates/nfs-provisioner/src/main.rs \
    && touch crates/nfs-provisioner/src/lib.rs \
    && cargo build --release --locked -p nfs-provisioner \
    && rm -rf crates/nfs-provisioner/src

# Layer 2, the provisioner itself; `touch` as above. The check at the end runs the binary.
COPY crates/nfs-provisioner/src crates/nfs-provisioner/src
RUN touch crates/nfs-provisioner/src/main.rs crates/nfs-provisioner/src/lib.rs \
    && cargo build --release --locked -p nfs-provisioner \
    && install -D -m 0755 target/release/hearth-nfs-provisioner /out/hearth-nfs-provisioner \
    && NFS_SERVER=192.0.2.1 NFS_PATH=/export /out/hearth-nfs-provisioner --check-config

# ---------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS provisioner

# Nothing to install: the binary needs only glibc, and reaches the API server with the CA
# of its service account token. No USER: it runs as root, as nfs-subdir-external-provisioner
# did, because NFS checks permissions on the server by uid (see
# deploy/kubernetes/nfs-provisioner/README.md, "Why root"): only root can make directories
# in a root-owned export, chown them (directoryUid/Gid) and remove other users' files. The
# Deployment cuts root down to three capabilities; drop-in mode (the seed's Deployment with
# only its image changed) has no securityContext and needs the image to be root.
COPY --from=provisioner-builder /out/hearth-nfs-provisioner /usr/local/bin/hearth-nfs-provisioner

# /healthz, /readyz and /metrics (`listen` in the configuration, NFS_PROVISIONER_LISTEN in
# drop-in mode). No HEALTHCHECK: outside Kubernetes there is no API server to serve, and
# Kubernetes uses the Deployment's probes.
EXPOSE 8080

# SIGTERM: the controllers stop, the Lease is released, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hearth-nfs-provisioner"]

# ---------------------------------------------------------------------------------------
# Hearth's runtime: the last stage, so a plain `docker build .` gives Hearth's image.
FROM ${RUNTIME_IMAGE} AS runtime

# Only what the binary needs at run time: RocksDB is linked statically but uses the C++
# runtime (libstdc++6, which pulls libgcc-s1) dynamically; ca-certificates for outgoing
# TLS (federation). No curl: the health check below uses bash, which the image has.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hearth \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/matrix-conduit \
       --no-create-home --shell /usr/sbin/nologin hearth \
    && install -d -m 0750 -o 10001 -g 10001 /var/lib/matrix-conduit

COPY --from=builder /out/hearth /usr/local/bin/hearth

# The data path of the Conduit deployment, so an existing ConfigMap works unchanged.
# MALLOC_MMAP_THRESHOLD_ fixes glibc's mmap threshold at 1 MiB: each password check
# (argon2id) allocates 19 MiB, and with glibc's default dynamic threshold that memory
# stays in the process after the request (measured: 1.6 GiB resident after 32 logins at
# once, against 22 MiB with this setting). See deploy/kubernetes/README.md.
ENV CONDUIT_ADDRESS=0.0.0.0 \
    CONDUIT_PORT=6167 \
    CONDUIT_DATABASE_PATH=/var/lib/matrix-conduit \
    MALLOC_MMAP_THRESHOLD_=1048576

USER 10001:10001
WORKDIR /var/lib/matrix-conduit
VOLUME ["/var/lib/matrix-conduit"]
EXPOSE 6167

# A real HTTP check without curl: bash opens the TCP connection, sends the request and
# requires a `200` status line from /_hearth/health (which also reads the database).
# Adding curl would pull in libcurl and a dozen libraries for this one line, and a
# `hearth`-side check would need the server's code; a bare TCP connect would not tell a
# server that answers 503 from a healthy one. Kubernetes ignores HEALTHCHECK and uses the
# Deployment's probes on the same endpoint; this one serves `docker run` and Compose.
# It connects to 127.0.0.1, so CONDUIT_ADDRESS must stay 0.0.0.0 (or 127.0.0.1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${CONDUIT_PORT:-6167} && printf 'GET /_hearth/health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 4 _ code _ <&3 && [ \"${code:0:3}\" = 200 ]"]

# SIGTERM: Hearth finishes in-flight requests, flushes the database and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hearth"]
