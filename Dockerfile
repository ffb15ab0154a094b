# qkms operator image: `docker build -t ghcr.io/qkms/qkms:0.1.0 .`
# Runs as the non-root user 10001 with a read-only root filesystem in mind: nothing is
# written outside /tmp (HOME) and /var/lib/qkms (QKMS_DATA_DIR, a volume in Kubernetes).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the package needs (see .dockerignore): a clean checkout builds the same image.
COPY pyproject.toml README.md ./
COPY operator ./operator
# operator/qkms/examples is a symlink to examples/: the wheel bundles them (qkms serve).
COPY examples ./examples
# All dependencies ship wheels for CPython 3.11 on glibc, so no compiler is needed.
RUN python -m venv /opt/qkms \
 && /opt/qkms/bin/pip install '.[operator]' \
 && /opt/qkms/bin/qkms version

FROM python:3.11-slim
LABEL org.opencontainers.image.title="qkms" \
      org.opencontainers.image.description="A Kubernetes operator for cryptographic keys" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 qkms \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin qkms \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/qkms
COPY --from=build /opt/qkms /opt/qkms
ENV PATH=/opt/qkms/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    QKMS_DATA_DIR=/var/lib/qkms
WORKDIR /tmp
USER 10001:10001
# 8080: Kopf's liveness endpoint (/healthz); 8443: the data-plane API.
EXPOSE 8080 8443
ENTRYPOINT ["qkms"]
CMD ["operator"]
