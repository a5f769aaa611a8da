# One static binary in an otherwise empty image: `make images` builds
# graftd, etcd, nats-server and the test app envserver with CGO_ENABLED=0
# and puts each in its own build context as ./app. No registry is needed to
# build or run these.
FROM scratch
COPY app /app
ENTRYPOINT ["/app"]
