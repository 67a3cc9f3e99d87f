# syntax=docker/dockerfile:1
#
# lifecycled container image.
#
#   docker build -t lifecycled .
#   docker run -d --name lifecycled -p 127.0.0.1:9464:9464 \
#       -v lifecycled-data:/var/lib/lifecycled lifecycled
#
# The HTTP API listens on 127.0.0.1 inside the container unless told otherwise.
# To publish it, bind it to all interfaces AND configure API keys (the daemon
# refuses a non-loopback API address without keys and exits with code 2):
#
#   docker run -d -p 8080:8080 -p 9464:9464 \
#       -e LIFECYCLE_HTTP_HOST=0.0.0.0 \
#       -e LIFECYCLE_API_KEYS="$(printf %s "$ADMIN_KEY" | sha256sum | cut -d' ' -f1):admin" \
#       -e LIFECYCLE_REDIS_URL=redis://redis:6379/0 \
#       lifecycled
#
# Without LIFECYCLE_REDIS_URL the daemon runs its embedded Valkey server and keeps
# its append-only file in the /var/lib/lifecycled volume.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------
# Builder: wheels for the project and all of its dependencies.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore limits the context to what the build needs.
COPY . /src
RUN pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------------------
# Runtime: the installed wheels, nothing else from the build.
FROM ${PYTHON_IMAGE} AS runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 lifecycled \
 && useradd --system --uid 10001 --gid lifecycled --no-create-home \
        --home-dir /var/lib/lifecycled --shell /usr/sbin/nologin lifecycled \
 && install -d -o lifecycled -g lifecycled -m 0700 /var/lib/lifecycled

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels lifecycled \
 && lifecycled --help > /dev/null

# API on loopback by default (see above); metrics and health on all interfaces
# so that orchestrators can probe them; JSON log lines on stderr.
ENV LIFECYCLE_HTTP_HOST=127.0.0.1 \
    LIFECYCLE_HTTP_PORT=8080 \
    LIFECYCLE_METRICS_HOST=0.0.0.0 \
    LIFECYCLE_METRICS_PORT=9464 \
    LIFECYCLE_DATA_DIR=/var/lib/lifecycled \
    LIFECYCLE_LOG_FORMAT=json

VOLUME ["/var/lib/lifecycled"]
WORKDIR /var/lib/lifecycled

# 8080: HTTP API (/v1/...), loopback-only unless LIFECYCLE_HTTP_HOST and
#       LIFECYCLE_API_KEYS are set.
# 9464: Prometheus /metrics, /healthz (liveness) and /readyz (readiness).
EXPOSE 8080 9464

USER 10001:10001

# slim images carry no curl: probe liveness with the image's own Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=3)"]

# SIGTERM drains in-flight work and exits 0 within LIFECYCLE_SHUTDOWN_TIMEOUT_SECONDS
# (default 10); give `docker stop` a longer --time than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lifecycled"]
CMD ["run"]
