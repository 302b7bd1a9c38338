# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are resolved from uv.lock in a build stage; the runtime image holds
# only the virtualenv and runs as an unprivileged user.
#   docker build -t gateway .
#   docker run -p 8080:8080 -v $PWD/gateway.yaml:/etc/gateway/gateway.yaml:ro -v gw-data:/var/lib/gateway gateway
# The config must listen on 0.0.0.0:8080 (or another port you publish) and keep data_dir on the volume.

# Pinned: the same interpreter and uv the lock file and the wheel test (tests/integration/test_wheel.py)
# were checked with. Bump both on purpose, never by a rebuild.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE} AS build
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv
ARG UV_VERSION
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first, so code changes do not invalidate the (slow) dependency layer.
COPY pyproject.toml uv.lock README.md LICENSE ./
RUN uv sync --frozen --no-dev --no-install-project
COPY gateway ./gateway
COPY admin ./admin
RUN uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway --create-home --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway && chown root:gateway /etc/gateway && chmod 0750 /etc/gateway
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER gateway:gateway
WORKDIR /var/lib/gateway
VOLUME ["/var/lib/gateway"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["gateway", "healthcheck", "--config", "/etc/gateway/gateway.yaml"]
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
