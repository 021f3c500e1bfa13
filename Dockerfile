# syntax=docker/dockerfile:1
# The token broker's production image. From the repository root:
#   docker build -t token-broker:0.2.0 .
#   docker run --rm token-broker:0.2.0 check      # `broker check`: validate settings and policies
#   docker run --rm -p 8080:8080 token-broker:0.2.0
#
# Two stages: the first installs the project into a virtualenv, the second copies only that
# virtualenv onto the same slim base, so no source tree, build tool or pip cache ships. The image
# runs as a numeric non-root user and needs no writable path except /tmp, so it runs with a
# read-only root filesystem (the Helm chart mounts an emptyDir at /tmp).
#
# The base is pinned to an exact Python release, never `latest`; both stages use the same one
# because the virtualenv's python is a symlink to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/token-broker
# Only what the package build reads: the metadata (pyproject.toml names README.md) and the code.
COPY pyproject.toml README.md ./
COPY broker ./broker
# Installed the way the README installs the project (`pip install .` of this repository), but
# without extras: `[test]` (pytest, ruff, mypy, type stubs) is for `make test` only, and the server
# never imports it. A regular, not editable, install: /src is not copied to the final stage.
# pip compiles the bytecode here, so the read-only runtime never needs to write any.
RUN /opt/token-broker/bin/pip install --no-cache-dir . \
    && /opt/token-broker/bin/broker --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="token-broker" \
      org.opencontainers.image.description="Policy-aware service-token broker for Smithery Connect" \
      org.opencontainers.image.licenses="Apache-2.0"
# PYTHONDONTWRITEBYTECODE: never try to write .pyc files (the root filesystem is read-only).
# HOME and TMPDIR: the only writable place is /tmp.
# BROKER_POLICIES_DIR: mount the policy files here (the chart does).
ENV PATH=/opt/token-broker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    BROKER_POLICIES_DIR=/etc/token-broker/policies
# Owned by root and not writable by the broker's user: the code cannot be changed at run time.
COPY --from=build /opt/token-broker /opt/token-broker
# Numeric, so Kubernetes can enforce runAsNonRoot without a passwd entry.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["broker"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
