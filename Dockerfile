# llm-attr: build with the Rust toolchain, run from a small distroless image as a non-root user.
# (No `# syntax=` line: BuildKit would pull a frontend image for it, which fails offline; the
# cache mounts below work with the built-in frontend.)
#
#   docker build -t llm-attr .
#   podman build --format docker -t llm-attr .   # podman/buildah: keep the HEALTHCHECK (OCI drops it)
#   docker run -p 8080:8080 -v llm-attr-hub:/data/hf llm-attr                       # default model from the hub
#   docker run -p 8080:8080 -v "$PWD/models:/models:ro" \
#       -e LLM_ATTR_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf llm-attr         # a local GGUF file

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin llm-attr \
    && cp target/release/llm-attr /usr/local/bin/llm-attr \
    && mkdir -p /data/hf

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/llm-attr /usr/local/bin/llm-attr
COPY --from=build --chown=65532:65532 /data /data
# Every serve flag has an env var (see `llm-attr serve --help`); the model spec is LLM_ATTR_MODEL.
ENV LLM_ATTR_MODEL=hf:distilbert/distilgpt2 \
    LLM_ATTR_HOST=0.0.0.0 \
    LLM_ATTR_PORT=8080 \
    HF_HOME=/data/hf \
    RUST_LOG=info \
    LLM_ATTR_SHUTDOWN_GRACE=6
# Shutdown takes at most the grace (6 s) + 2 s for open connections: inside the 10 s that
# `docker stop` waits by default. A longer grace needs `docker stop --time` >= grace + 3.
STOPSIGNAL SIGTERM
VOLUME ["/data/hf"]
EXPOSE 8080
USER 65532:65532
# The probe dials the address and port the running `serve` uses (its flags or LLM_ATTR_HOST /
# LLM_ATTR_PORT). The start period covers loading (or first downloading) the model; override it
# with `docker run --health-start-period=600s` (podman: the same flag) on a slow link.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/usr/local/bin/llm-attr", "probe", "--path", "/ready"]
ENTRYPOINT ["/usr/local/bin/llm-attr"]
CMD ["serve"]
