# One static binary in an otherwise empty image: `make images` builds
# graftd, etcd and nats-server with CGO_ENABLED=0 and puts each in its own
# build context as ./app. No registry is needed to build or run these.
FROM scratch
COPY app /app
ENTRYPOINT ["/app"]
