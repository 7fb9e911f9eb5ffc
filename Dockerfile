# syntax=docker/dockerfile:1
#
# Cascade gateway image.
#
#   docker build -t cascade .
#   docker run --rm -p 8080:8080 -e CASCADE_CONFIG=/etc/cascade/demo.toml cascade
#
# The default CMD serves /etc/cascade/cascade.toml (production-like; needs the
# provider keys named there). /etc/cascade/demo.toml works with no keys at all.

# ---- build stage -----------------------------------------------------------
FROM rust:1-slim-bookworm AS build
WORKDIR /src

# Only what the release binary needs: the manifest, the lockfile and the source.
# rustls is used for TLS, so no OpenSSL headers are required; the image's gcc
# and libc6-dev compile the bundled SQLite (rusqlite "bundled"), so the runtime
# stage needs no libsqlite3.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# CARGO_PROFILE_RELEASE_STRIP drops debug symbols without touching Cargo.toml.
RUN CARGO_PROFILE_RELEASE_STRIP=true cargo build --release --locked

# ---- runtime stage ---------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: TLS to upstream providers; curl: the HEALTHCHECK below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged user `cascade` with a fixed uid/gid (10001), so USER can be
# numeric (Kubernetes runAsNonRoot can verify it; hadolint DL3066).
# /var/lib/cascade holds the SQLite ledger: it is created (and owned by cascade)
# before VOLUME so a fresh named volume inherits that ownership (a bind mount
# must be writable by uid 10001).
RUN groupadd --system --gid 10001 cascade \
    && useradd --system --uid 10001 --gid cascade --home-dir /var/lib/cascade \
       --shell /usr/sbin/nologin cascade \
    && mkdir -p /var/lib/cascade /etc/cascade \
    && chown cascade:cascade /var/lib/cascade

COPY --from=build /src/target/release/cascade /usr/local/bin/cascade
# config/ -> /etc/cascade (demo.toml, cascade.toml, examples/, ...)
COPY config/ /etc/cascade/

ENV CASCADE_CONFIG=/etc/cascade/cascade.toml \
    CASCADE__SERVER__LISTEN=0.0.0.0:8080 \
    CASCADE__LEDGER__PATH=/var/lib/cascade/cascade.db \
    CASCADE_LOG_FORMAT=json

VOLUME ["/var/lib/cascade"]
WORKDIR /var/lib/cascade
USER 10001:10001

EXPOSE 8080

# Liveness only (/healthz). If you change CASCADE__SERVER__LISTEN's port, override
# the health check too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]

ENTRYPOINT ["cascade"]
CMD ["serve"]
