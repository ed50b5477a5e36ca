# A base image for Python services: children only add their source.
FROM python:3.11-slim
MAINTAINER Platform Team <platform@example.com>
LABEL maintainer="platform@example.com" version="2.3" description="python onbuild base"
ENV LANG C.UTF-8
ENV PIP_NO_CACHE_DIR off
RUN pip install --upgrade pip setuptools wheel
WORKDIR /usr/src/app
ONBUILD ARG PIP_EXTRA_INDEX_URL
ONBUILD COPY requirements.txt /usr/src/app/
ONBUILD RUN --mount=type=cache,target=/root/.cache/pip pip install -r requirements.txt
ONBUILD COPY . /usr/src/app
ONBUILD HEALTHCHECK --interval=1m CMD python -m healthcheck
VOLUME /usr/src/app/data /var/log/app
EXPOSE 8000
STOPSIGNAL SIGTERM
CMD python -m app
