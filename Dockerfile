# syntax=docker/dockerfile:1
#
# registry-credential-syncer container image.
#
#   docker build -t registry.example.com/platform/registry-credential-syncer:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Stage 1 builds the wheel and installs it with its runtime dependencies into a
# virtualenv; stage 2 copies only that virtualenv onto a clean slim base, so the
# final image holds no compiler, no wheel files, no pip cache and no source tree.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel needs: packaging metadata and the package itself.
COPY pyproject.toml README.md ./
COPY syncer ./syncer
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/syncer \
 && /opt/syncer/bin/pip install --no-cache-dir /wheels/registry_credential_syncer-*.whl \
 && /opt/syncer/bin/pip uninstall --yes pip setuptools \
 && find /opt/syncer -name '__pycache__' -type d -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
# Where the source lives (a placeholder until the project has its public home; the alerts'
# runbook_url uses the same address). Override with --build-arg SOURCE=<repository URL>.
ARG SOURCE=https://github.com/example/registry-credential-syncer
LABEL org.opencontainers.image.title="registry-credential-syncer" \
      org.opencontainers.image.description="Syncs container-registry credentials from Vault into login-verified Kubernetes dockerconfigjson secrets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.documentation="docs/operator-guide.md"

# A fixed numeric UID/GID so Kubernetes can verify runAsNonRoot (deploy/ uses runAsUser 10001).
RUN groupadd --system --gid 10001 syncer \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin syncer

COPY --from=build /opt/syncer /opt/syncer

# The root filesystem is read-only in the cluster: never write bytecode, never buffer logs.
ENV PATH=/opt/syncer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SYNCER_CONFIG=/etc/syncer/config.toml

USER 10001:10001
WORKDIR /tmp
# /metrics, /healthz and /readyz ([metrics] listen in config.toml).
EXPOSE 9102
ENTRYPOINT ["syncer"]
CMD ["--log-format", "json"]
