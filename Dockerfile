# Image for burr-dist workers and the CLI (used by docker-compose.yml):
#   docker build -t burr-dist .
#   docker run --rm -e REDIS_URL=redis://host:6379/0 burr-dist burr-dist status
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (not editable; README.md is optional), then drop the sources.
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY burr_dist ./burr_dist
RUN pip install . \
    && cd / && rm -rf /src \
    && useradd --system --no-create-home --uid 10001 burr

# App registries are imported from the working directory: `burr-dist worker examples.apps`.
WORKDIR /app
COPY examples ./examples

USER burr
CMD ["burr-dist", "--help"]
