# syntax=docker/dockerfile:1.7-labs
# check=skip=JSONArgsRecommended
# One Dockerfile, three images: api, web and worker share a pruned workspace.

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS base
ENV PNPM_HOME=/pnpm
ENV PATH=$PNPM_HOME:$PATH
RUN corepack enable
WORKDIR /repo

FROM base AS pruner
RUN pnpm add --global turbo@1.12.4
COPY --exclude=**/node_modules --exclude=**/.turbo . .
ARG APP
RUN turbo prune --scope="@acme/${APP}" --docker

FROM base AS installer
COPY --from=pruner /repo/out/json/ .
COPY --from=pruner /repo/out/pnpm-lock.yaml ./pnpm-lock.yaml
RUN --mount=type=cache,id=pnpm-store,target=/pnpm/store \
    pnpm install --frozen-lockfile
COPY --from=pruner /repo/out/full/ .
COPY --parents packages/*/tsconfig.json ./
ARG APP
RUN --mount=type=secret,id=turbo_token,env=TURBO_TOKEN \
    pnpm turbo run build --filter="@acme/${APP}..."

FROM ${NODE_IMAGE} AS runner-base
WORKDIR /app
RUN groupadd --system --gid 1001 acme && useradd --system --uid 1001 --gid acme acme
USER acme

FROM runner-base AS api
COPY --from=installer --chown=acme:acme /repo/apps/api/dist ./dist
COPY --from=installer --chown=acme:acme /repo/node_modules ./node_modules
EXPOSE 4000
CMD node dist/main.js

FROM runner-base AS worker
COPY --from=installer --chown=acme:acme /repo/apps/worker/dist ./dist
COPY --from=installer --chown=acme:acme /repo/node_modules ./node_modules
CMD node dist/worker.js --concurrency=${WORKER_CONCURRENCY:-4}

FROM nginx:1.25-alpine AS web
COPY --from=installer /repo/apps/web/dist /usr/share/nginx/html
COPY <<EOF /etc/nginx/conf.d/default.conf
server {
    listen 80;
    root /usr/share/nginx/html;
    location / { try_files \$uri /index.html; }
    location /api/ { proxy_pass http://api:4000/; }
}
EOF
EXPOSE 80
