# syntax=docker/dockerfile:1
# redward container image.
#
#   docker build -t redward .
#   docker run --rm -p 6380:6380 -v "$PWD/my-config:/etc/redward:ro" redward
#
# The image holds no config, certificate or key: mount them at /etc/redward
# (docker-compose.yml shows one way). It runs as uid 10001, so mounted keys must
# be readable by that uid.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and target/ between builds. target/ is
# a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -m 0755 target/release/redward /usr/local/bin/redward

FROM debian:bookworm-slim
# ca-certificates: the trust roots for an upstream Redis that speaks TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 redward \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin redward
COPY --from=build /usr/local/bin/redward /usr/local/bin/redward
# Numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001
EXPOSE 6380
# SIGTERM (docker stop) starts a graceful shutdown bounded by shutdown_grace.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/redward"]
CMD ["--config", "/etc/redward/redward.yaml"]
