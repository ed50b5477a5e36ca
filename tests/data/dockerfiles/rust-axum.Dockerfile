# syntax=docker/dockerfile:1.6
FROM rust:1.76-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.62
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
RUN apt-get update && apt-get install -y --no-install-recommends \
        pkg-config \
        libssl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=planner /app/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/app/target,id=axum-target \
    cargo build --release --bin api \
 && cp target/release/api /usr/local/bin/api

FROM debian:bookworm-slim AS runtime
RUN <<EOF bash
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends ca-certificates libssl3
rm -rf /var/lib/apt/lists/*
useradd --system --uid 10001 --no-create-home api
EOF
COPY --from=builder /usr/local/bin/api /usr/local/bin/api
ENV RUST_LOG=info,tower_http=debug \
    APP_ADDR=0.0.0.0:3000
USER api
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/api"]
