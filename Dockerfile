# syntax=docker/dockerfile:1
# The dnsd image: a virtualenv built in one stage and copied into a clean one.
#
#   docker build -t ghcr.io/dnsd/dnsd:0.1.0 .      # the tag is dnsd.__version__
#   docker run --rm -p 5353:5353/udp -p 5353:5353/tcp ghcr.io/dnsd/dnsd:0.1.0 --demo
#
# tests/test_container.py replays this file without Docker (the COPY, ENV and RUN lines of both
# stages, in a fresh venv, then the ENTRYPOINT as USER from a read-only install), and
# tests/test_deploy.py runs hadolint on it and checks USER against deploy/'s runAsUser.

# The build stage is the full image: it has the C compiler and headers that dnsd's UDP extension
# (dnsd/transports/_batch.c) needs; the final stage is slim and gets the built venv.
FROM python:3.11-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY dnsd/ dnsd/
# The venv has the same path in both stages: its scripts carry absolute shebangs.
# pip and setuptools are not needed at run time. Bytecode is compiled here because nothing can
# be written at run time (read-only root filesystem, non-root user); hash-based .pyc files stay
# valid whatever the copy does to the files' modification times. The extension is optional for
# pip (dnsd answers in Python without it); the image must have it, so its import is checked
# (-P: from the venv, not from the source tree in the working directory).
RUN python -m venv /opt/dnsd \
 && /opt/dnsd/bin/pip install ".[uvloop]" \
 && /opt/dnsd/bin/python -P -c "import dnsd.transports._batch" \
 && /opt/dnsd/bin/pip uninstall -y pip setuptools \
 && /opt/dnsd/bin/python -m compileall -q -f --invalidation-mode checked-hash /opt/dnsd/lib

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="dnsd" \
      org.opencontainers.image.description="Authoritative DNS for the global (GUA) addresses of Kubernetes pods" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/dnsd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/dnsd /opt/dnsd
# Numeric, so that the kubelet can check runAsNonRoot (a user name cannot be verified); the same
# UID as runAsUser in deploy/deployment.yaml. dnsd needs no capability: it listens on 5353, and
# the Service maps port 53 to it.
USER 65532:65532
EXPOSE 5353/udp 5353/tcp 8080/tcp
# Exec form: dnsd is PID 1 and handles SIGTERM itself (lameduck, then exit 0); no shell, no init.
# No HEALTHCHECK: Kubernetes ignores it (the Deployment probes /healthz and /readyz), and it would
# hard-code the --http port.
ENTRYPOINT ["/opt/dnsd/bin/dnsd"]
