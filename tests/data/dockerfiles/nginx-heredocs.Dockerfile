# syntax=docker/dockerfile:1.4
FROM alpine:3.19 AS gen
ARG SITE_NAME="My Site"
RUN mkdir -p /site
COPY <<EOF1 <<EOF2 /site/
<!doctype html><title>${SITE_NAME}</title><h1>Hello</h1>
EOF1
User-agent: *
Disallow: /private/
EOF2
RUN <<"EOT" sh -eu
  cd /site
  for f in *; do
    echo "$f" >> manifest.txt
  done
EOT
RUN 3<<CONF cat /dev/fd/3 > /site/build-info.txt
built-by=memobuild
CONF

FROM nginx:1.25-alpine
RUN rm /etc/nginx/conf.d/default.conf
COPY <<'NGINX' /etc/nginx/conf.d/site.conf
server {
    listen 8080;
    server_name _;
    root /usr/share/nginx/html;
    add_header X-Frame-Options DENY;
    location = /healthz { return 200 "ok\n"; }
    location / { try_files $uri $uri/ =404; }
}
NGINX
COPY --from=gen /site/ /usr/share/nginx/html/
RUN ["nginx", "-t"]
EXPOSE 8080
HEALTHCHECK --interval=10s CMD wget -q -O /dev/null http://localhost:8080/healthz || exit 1
