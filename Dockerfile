# qkms operator image: `docker build -t ghcr.io/qkms/qkms:0.1.0 .`, or without a daemon
# `buildah bud -t ghcr.io/qkms/qkms:0.1.0 .` (tests/image/build.sh builds and caches it).
# Runs as the non-root user 10001 with a read-only root filesystem: nothing is written
# outside /tmp (HOME) and /var/lib/qkms (QKMS_DATA_DIR, a volume in Kubernetes).
#
# BASE: Debian bookworm with Python 3.11 (python3, python3-venv) and apt. The default is the
# image users pull. It is not pinned by digest here: this repository's machines reach no
# container registry, so no digest could be checked; pin it where you build, e.g.
#   --build-arg BASE=python:3.11-slim-bookworm@sha256:<digest of `skopeo inspect`>
# Where no registry is reachable, tests/image/build.sh makes a bookworm root with
# debootstrap from Debian's mirror and passes it as BASE (the same Debian release).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the package needs (see .dockerignore): a clean checkout builds the same image.
COPY pyproject.toml README.md ./
COPY operator ./operator
# operator/qkms/examples is a symlink to examples/: the wheel bundles them (qkms serve).
COPY examples ./examples
# Every provider's SDK, so any KeyPolicy works with this image: Vault (hvac), AWS KMS
# (boto3), Azure Key Vault (azure-keyvault-keys, azure-identity), PKCS#11 (python-pkcs11).
# The cryptography they get is the one every install gets: below 51, as pyproject.toml's
# core dependency says (azure-identity's msal caps it). All ship wheels for CPython 3.11 on
# glibc, so no compiler is needed. Behind a TLS-inspecting proxy, hand pip its CA as a
# build secret (never a layer): --secret id=pip-ca,src=/path/to/ca-bundle.crt
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 -m venv /opt/qkms \
 && /opt/qkms/bin/pip install '.[operator,vault,aws,azure,hsm]' \
 && /opt/qkms/bin/qkms version \
 && /opt/qkms/bin/python -c "import kopf, kubernetes, hvac, boto3, azure.keyvault.keys, azure.identity, pkcs11"

FROM ${BASE}
LABEL org.opencontainers.image.title="qkms" \
      org.opencontainers.image.description="A Kubernetes operator for cryptographic keys" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# SoftHSM2, the example PKCS#11 module: HSM_LIBRARY points at it (a KeyPolicy's
# provider.settings.library overrides it), and its tokens live on the data volume, as the
# root filesystem is read-only (initialise one with softhsm2-util --init-token;
# Debian's /etc/softhsm is root's alone, so the configuration is /etc/qkms/softhsm2.conf).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && install -d -m 0755 /etc/qkms \
 && printf '%s\n' 'directories.tokendir = /var/lib/qkms/softhsm/tokens' \
      'objectstore.backend = file' 'log.level = ERROR' > /etc/qkms/softhsm2.conf \
 && chmod 0644 /etc/qkms/softhsm2.conf \
 && groupadd --system --gid 10001 qkms \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin qkms \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/qkms
COPY --from=build /opt/qkms /opt/qkms
ENV PATH=/opt/qkms/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    QKMS_DATA_DIR=/var/lib/qkms \
    HSM_LIBRARY=/usr/lib/softhsm/libsofthsm2.so \
    SOFTHSM2_CONF=/etc/qkms/softhsm2.conf
WORKDIR /tmp
USER 10001:10001
# 8080: Kopf's liveness endpoint (/healthz); 8443: the data-plane API.
EXPOSE 8080 8443
ENTRYPOINT ["qkms"]
CMD ["operator"]
