# syntax=docker/dockerfile:1
# Two stages: wheels are built with the compilers of the full image, the runtime image only
# installs them, so it carries no build tools.
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
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["sf-receiver"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
