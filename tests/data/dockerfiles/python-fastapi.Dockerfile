# syntax=docker/dockerfile:1
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN <<EOF
set -eux
apt-get update
apt-get install -y --no-install-recommends build-essential libpq-dev
rm -rf /var/lib/apt/lists/*
EOF
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"
COPY requirements.txt requirements-prod.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r requirements.txt -r requirements-prod.txt
COPY pyproject.toml README.md ./
COPY src/ ./src/
RUN pip install --no-deps .

FROM builder AS test
COPY tests/ ./tests/
RUN --mount=type=cache,target=/root/.cache/pip pip install pytest==8.0.2 \
    && python -m pytest -q tests

FROM python:${PYTHON_VERSION}-slim AS runtime
ARG APP_USER=app
ARG APP_UID=10001
RUN apt-get update \
    # libpq is the only runtime dependency
    && apt-get install -y --no-install-recommends libpq5 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid "${APP_UID}" --create-home "${APP_USER}"
COPY --from=builder /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH" PYTHONUNBUFFERED=1
COPY <<-"EOF" /usr/local/bin/entrypoint.sh
	#!/bin/sh
	set -e
	if [ "$1" = "migrate" ]; then
		exec alembic upgrade head
	fi
	exec "$@"
	EOF
RUN chmod 0755 /usr/local/bin/entrypoint.sh
USER ${APP_USER}
WORKDIR /home/${APP_USER}
EXPOSE 8000
HEALTHCHECK CMD ["curl", "-fsS", "http://localhost:8000/healthz"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
