# stockflow in a container: build with the Rust toolchain, run on a slim Debian.
#   docker build -t stockflow .
#   docker run --rm stockflow --help

FROM rust:1.95-bookworm AS build
# librdkafka is built from the rdkafka crate's bundled sources (make, a C/C++ compiler, perl),
# with TLS and SCRAM from the system's OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl python3 pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin stockflow \
 && cp target/release/stockflow /usr/local/bin/stockflow

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/stockflow /usr/local/bin/stockflow
# An unprivileged user; /data is where a local lake goes when one is mounted.
RUN useradd --system --uid 10001 --home-dir /data --create-home stockflow
USER stockflow
WORKDIR /data
ENTRYPOINT ["stockflow"]
CMD ["--help"]
