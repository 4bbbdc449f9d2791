# Manticore's container image: the controller, the front end and the router (`manticore <role>`).
#   docker build -t manticore .                      # controller and front end
#   docker build --target router -t manticore-router .   # the router, with HAProxy
# The Nomad job files in manifests/nomad/ run these images with `--config /local/manticore.yaml`.

ARG NODE_IMAGE=node:20.19-bookworm-slim

# Compiles the TypeScript and builds the SQLite binding; only the results reach the runtime image.
FROM ${NODE_IMAGE} AS build
WORKDIR /src
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 make g++ \
    && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY controller controller
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev

# The controller and the front end: Node.js, the compiled code, the schemas and the shipped templates.
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    MANTICORE_LOG_FORMAT=json
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist/controller dist/controller
COPY crds crds
COPY manifests/templates manifests/templates
COPY manifests/haproxy manifests/haproxy
COPY hack/demo hack/demo
COPY controller/frontend/web controller/frontend/web
# State (the embedded store, HAProxy's run directory) goes to /app/.manticore unless configured elsewhere.
RUN mkdir /app/.manticore && chown node:node /app/.manticore
# The image's own user: nothing here runs as root.
USER node
# MANTICORE_HEALTH_URL names the process's health endpoint: the front end's (the default) or a status server's.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch(process.env.MANTICORE_HEALTH_URL || 'http://127.0.0.1:4000/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/controller/cli/main.js"]
# The role comes first: `controller`, `frontend` (or `router` in the router image), then `--config FILE`.
CMD ["frontend"]

# The router: the same image with HAProxy (Debian's 2.6, with the Prometheus exporter built in).
# HAProxy runs as the image's user on the host network (manticore-router.nomad.hcl), where ports below 1024
# (80 and 443 with TLS at the edge) need CAP_NET_BIND_SERVICE: the binary carries it as a file capability.
FROM runtime AS router
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy libcap2-bin \
    && setcap 'cap_net_bind_service=+ep' /usr/sbin/haproxy \
    && rm -rf /var/lib/apt/lists/*
USER node
ENV MANTICORE_ROUTER_STATUS_PORT=8405 \
    MANTICORE_HEALTH_URL=http://127.0.0.1:8405/healthz
CMD ["router"]
