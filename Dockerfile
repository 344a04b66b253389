# acr-ingest image: one image for the worker, beat, Flower and the dev emulator (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README* matches nothing harmlessly if the project has no README yet (pyproject.toml always matches).
COPY pyproject.toml README* ./
COPY ingest ./ingest
COPY tasks ./tasks
# A regular (non-editable) install with the PostgreSQL driver and the fingerprint extraction library (the
# fingerprint-worker runs it, and any worker does once ACR_INGEST_UPLOAD_AS=fingerprint); the source folder is
# not needed afterwards. The library's wheel is Linux x86_64 only: for another platform build with
# `--build-arg EXTRAS=postgres` (fingerprint uploads are then refused in one line saying why, and a worker of
# ingest.fingerprint alone refuses to start: run no fingerprint-worker there).
ARG EXTRAS=postgres,fingerprint
RUN pip install ".[${EXTRAS}]" && rm -rf /src

# Run as an unprivileged user; /app is its writable working directory (beat keeps celerybeat-schedule there).
RUN useradd --create-home --uid 10001 --user-group acr \
    && mkdir /app && chown acr:acr /app
WORKDIR /app
USER acr

# No wrapper: compose's `command:` (or a Procfile line) is the whole command line. Default: a worker.
ENTRYPOINT []
CMD ["acr-ingest", "worker"]
