# syntax=docker/dockerfile:1
# Two images from one tree (docs: README.md, "Images"):
#   docker build --target operator -t ghcr.io/avatar-operator/operator:0.1.0 .
#   docker build --target runner   -t ghcr.io/avatar-operator/runner:0.1.0 .
#
# Base images are pinned by exact tag; 3.11.7 is the Python the test suite
# runs on. A digest (@sha256:...) would pin harder, but no registry could be
# reached where this file was written, so any digest here would be unchecked;
# CI that can reach the registry should add it (docker buildx imagetools inspect).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# --- builder: wheels for the project and every dependency of both images ---
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Compilers only here, for a dependency that ships no binary wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY runner/ runner/
# An extra CA bundle for an intercepting proxy, as a build secret (never in a
# layer): `docker build --secret id=extra-ca,src=/path/to/ca.pem`, or
# `podman build --secret id=extra-ca,src=...` (hack/build-images.sh passes
# $PIP_CERT / $SSL_CERT_FILE when set). pip then trusts it beside the system's CAs.
# The runner extra's requirements come from pyproject.toml, so the runner
# image cannot drift from what the project declares.
RUN --mount=type=secret,id=extra-ca,required=false \
    if [ -s /run/secrets/extra-ca ]; then \
      cat /etc/ssl/certs/ca-certificates.crt /run/secrets/extra-ca > /tmp/ca-bundle.pem 2>/dev/null \
        || cp /run/secrets/extra-ca /tmp/ca-bundle.pem; \
      export PIP_CERT=/tmp/ca-bundle.pem; \
    fi \
 && python -m pip wheel --wheel-dir /wheels '.[runner]' \
 && rm -f /tmp/ca-bundle.pem \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['runner']))" \
      > /wheels/runner-requirements.txt

# --- the operator's environment: the project and its own dependencies only
# (kopf, kubernetes, livekit-api, aiohttp, pydantic, PyYAML, Pillow,
# prometheus-client); none of the runner's media stack ---
FROM builder AS operator-env
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels avatar-operator

# --- the runner's environment: the runner extra, and the project's wheel
# without its dependencies, so no kopf or kubernetes client ---
FROM builder AS runner-env
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels --no-deps avatar-operator \
 && /opt/venv/bin/pip install --no-index --find-links /wheels -r /wheels/runner-requirements.txt

# --- what both final images share: no compilers, a non-root user ---
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# uid/gid 10001, as the chart's and the runner pod's securityContext expect
# (operator/avatar_operator/build/pod.py); numeric so runAsNonRoot can check it.
RUN groupadd --system --gid 10001 avatar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin avatar
WORKDIR /
LABEL org.opencontainers.image.source="https://github.com/avatar-operator/avatar-operator" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM base AS runner
COPY --from=runner-env /opt/venv /opt/venv
USER 10001:10001
# CMD, not ENTRYPOINT: the operator's runner pod gives the whole command line
# as args (python -m avatar_runner), which replace CMD and would be appended
# to an ENTRYPOINT.
CMD ["python", "-m", "avatar_runner"]

# Last, so a plain `docker build .` gives the operator.
FROM base AS operator
COPY --from=operator-env /opt/venv /opt/venv
USER 10001:10001
ENTRYPOINT ["avatar-operator"]
CMD ["run"]
