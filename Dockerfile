# The engage worker / emitter image used by docker-compose.yml.
# Same pins as the local venv (`make venv`): requirements.lock, then the project without deps.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY requirements.lock ./
RUN pip install -r requirements.lock

# README.md* : the glob lets the build pass while the readme does not exist yet.
COPY pyproject.toml README.md* ./
COPY stream ./stream
COPY schemas ./schemas
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 engage && mkdir -p /data && chown engage /data
USER engage
ENV ENGAGE_DATA_DIR=/data \
    ENGAGE_WEB_HOST=0.0.0.0

EXPOSE 6066
CMD ["engage", "worker"]
