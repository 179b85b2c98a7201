# nextbest worker image: `docker build -t nextbest .`, then `docker run nextbest` (= `nextbest worker`).
# Settings come from NEXTBEST_* environment variables (see the README).

# --- build: install nextbest and its dependencies into a virtualenv ---------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# a compiler, for any dependency without a wheel for this platform
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/nextbest
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/nextbest/bin/pip install --upgrade pip && /opt/nextbest/bin/pip install .

# --- runtime: the virtualenv only, as an unprivileged user --------------------------------
FROM python:3.11-slim
ENV PATH=/opt/nextbest/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NEXTBEST_DATA_DIR=/var/lib/nextbest
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/nextbest nextbest \
    && mkdir -p /var/lib/nextbest \
    && chown 10001:10001 /var/lib/nextbest
COPY --from=build /opt/nextbest /opt/nextbest
# RocksDB tables (rebuilt from Kafka changelogs when lost; a volume makes restarts fast)
VOLUME /var/lib/nextbest
WORKDIR /var/lib/nextbest
USER 10001:10001
# 6066: the worker's /healthz, /readyz, /metrics; 8080: `nextbest api`
EXPOSE 6066 8080
ENTRYPOINT ["nextbest"]
CMD ["worker"]
