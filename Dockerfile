# syntax=docker/dockerfile:1
# Two stages: the build stage makes the project's wheel (every dependency ships wheels, so
# no compiler is needed), the runtime image only installs wheels and carries no build files.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY receiver ./receiver
COPY schemas ./schemas
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECEIVER_HOST=0.0.0.0 RECEIVER_PORT=8080 RECEIVER_DATA_DIR=/var/lib/sf-receiver \
    RECEIVER_WSDL_DIR=/etc/sf-receiver/wsdl
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && groupadd --system --gid 10001 receiver \
    && useradd --system --uid 10001 --gid receiver --home-dir /var/lib/sf-receiver --create-home receiver \
    && mkdir -p /etc/sf-receiver/wsdl
COPY schemas/outbound /etc/sf-receiver/wsdl
USER receiver
EXPOSE 8080
# The port the receiver listens on (RECEIVER_PORT, which `docker run -e` may change).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RECEIVER_PORT', '8080'), timeout=2).status == 200 else 1)"]
ENTRYPOINT ["sf-receiver"]
# Host and port come from the ENV above: flags would win over `docker run -e RECEIVER_PORT=...`.
CMD ["serve"]
