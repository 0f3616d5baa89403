# Skein's container image: the broker built with cargo, run as a non-root user (65532) on a
# small base without a shell. The Helm chart (charts/skein) runs this image.
#
#   docker build -t skein:0.1.0 .
#
# On a machine with no registry to pull the images below from, scripts/docker-image.sh
# builds the same image offline: it makes a root file system from a binary built on the
# machine and the shared libraries that binary links, `docker import`s it and builds the
# `offline` stage on it (--target offline --build-arg OFFLINE_ROOT=<imported image>).
# Both stages end in the same settings; the script checks that they do.

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
# glibc and libgcc, a nonroot user (65532), no shell: what the binary needs and no more.
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# Made by scripts/docker-image.sh; scratch keeps this stage harmless for a builder that
# runs every stage.
ARG OFFLINE_ROOT=scratch

FROM ${OFFLINE_ROOT} AS offline
LABEL org.opencontainers.image.title="skein" org.opencontainers.image.licenses="Apache-2.0"
ENV SKEIN_DATA_DIR=/var/lib/skein
USER 65532:65532
WORKDIR /var/lib/skein
EXPOSE 1883 7070 8080
ENTRYPOINT ["/usr/local/bin/skein"]

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p skein-broker --bin skein \
 && install -D -m 0755 target/release/skein /out/usr/local/bin/skein \
 && install -d -m 0755 /out/var/lib/skein

FROM ${BASE_IMAGE}
COPY --from=build /out/usr/local/bin/skein /usr/local/bin/skein
COPY --from=build --chown=65532:65532 /out/var/lib/skein /var/lib/skein
LABEL org.opencontainers.image.title="skein" org.opencontainers.image.licenses="Apache-2.0"
ENV SKEIN_DATA_DIR=/var/lib/skein
USER 65532:65532
WORKDIR /var/lib/skein
EXPOSE 1883 7070 8080
ENTRYPOINT ["/usr/local/bin/skein"]
