FROM debian:bullseye
MAINTAINER Ops <ops@example.com>

# Legacy forms BuildKit still accepts: ENV key value, shell-form CMD, lower-case keywords.
ENV DEBIAN_FRONTEND noninteractive
env TZ Europe/Paris
RUN apt-get update && apt-get install -y \
	curl \
	supervisor \
	# the editor is for debugging sessions
	vim-tiny \
	&& rm -rf /var/lib/apt/lists/*
ADD supervisord.conf /etc/supervisor/conf.d/supervisord.conf
ADD https://example.com/tool-1.2.3.tar.gz /tmp/
copy ["docker entrypoint.sh", "/usr/local/bin/"]
Run chmod +x "/usr/local/bin/docker entrypoint.sh"
VOLUME ["/var/lib/app", "/var/log/app"]
EXPOSE 80 443
WORKDIR /var/lib/app
USER www-data
ENTRYPOINT ["/usr/local/bin/docker entrypoint.sh"]
CMD /usr/bin/supervisord -n
