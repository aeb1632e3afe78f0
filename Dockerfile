# One image for every Yizhan process: `yizhan serve cases|intake|projections`, `yizhan relay`,
# `yizhan db migrate`. Configuration comes from the environment (see docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YIZHAN_LOG_FORMAT=json \
    YIZHAN_HTTP_HOST=0.0.0.0 \
    YIZHAN_INTAKE_HTTP_HOST=0.0.0.0

WORKDIR /app

# Dependencies first (cached while only the code changes).
COPY pyproject.toml README.md ./
COPY shared/__init__.py shared/__init__.py
COPY services/__init__.py services/__init__.py
RUN pip install . && pip uninstall -y yizhan

COPY shared ./shared
COPY services ./services
# Reference data (org tree, staff, catalogue, source registry) is read from data/kunming next
# to the source tree (shared.reference.default_reference_dir), so the install is editable: a
# regular wheel would not carry data/ (see the deployment notes in README).
COPY data ./data
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /app yizhan \
    && python -c "from shared.reference import load_reference; load_reference()"

USER yizhan
# cases, intake, projections, and the relay's /healthz, /readyz and /metrics
EXPOSE 8001 8002 8003 8004
ENTRYPOINT ["yizhan"]
CMD ["--help"]
