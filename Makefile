# graft — run `make help` for the targets.
BUF := go run github.com/bufbuild/buf/cmd/buf@v1.75.0
GO_TEST_FLAGS ?= -race -count=1 -timeout 15m

.PHONY: help run build test bench bench-agents bench-agents-bare bench-dbcred bench-broker fuzz generate lint fmt images cluster cluster-down integration

# help pads every target name to the longest one's width, so the
# descriptions line up however long a new target's name is.
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{n[NR] = $$1; d[NR] = $$2; if (length($$1) > w) w = length($$1)} END {for (i = 1; i <= NR; i++) printf "  %-" w "s  %s\n", n[i], d[i]}'

# run builds graftd and execs it rather than `go run`, which exits 1 after
# Ctrl-C however cleanly graftd stopped. GRAFTD_FLAGS adds flags.
run: ## start graftd in dev mode (embedded etcd and NATS, data in ./graft-data)
	go build -o bin/graftd ./cmd/graftd && exec ./bin/graftd --dev $(GRAFTD_FLAGS)

build: ## build the binaries in cmd/ into ./bin (static, CGO_ENABLED=0)
	CGO_ENABLED=0 go build -o bin/ ./cmd/...

test: ## run every unit and in-process test with the race detector
	go test $(GO_TEST_FLAGS) ./...

# Images for the Docker integration suite, FROM scratch: graftd from this
# module, etcd and nats-server built from the versions go.mod pins, and the
# docker reload test's application (integration/envserver).
GRAFT_IMAGE ?= graft-graftd:dev
GRAFT_ETCD_IMAGE ?= graft-etcd:dev
GRAFT_NATS_IMAGE ?= graft-nats:dev
GRAFT_ENVSERVER_IMAGE ?= graft-envserver:dev
export GRAFT_IMAGE GRAFT_ETCD_IMAGE GRAFT_NATS_IMAGE GRAFT_ENVSERVER_IMAGE

images: ## build FROM-scratch Docker images of graftd, etcd, nats-server and envserver (names: GRAFT_IMAGE, GRAFT_ETCD_IMAGE, GRAFT_NATS_IMAGE, GRAFT_ENVSERVER_IMAGE)
	mkdir -p build/graftd build/etcd build/nats build/envserver
	CGO_ENABLED=0 go build -trimpath -o build/graftd/app ./cmd/graftd
	CGO_ENABLED=0 go build -trimpath -o build/etcd/app go.etcd.io/etcd/server/v3
	CGO_ENABLED=0 go build -trimpath -o build/nats/app github.com/nats-io/nats-server/v2
	CGO_ENABLED=0 go build -trimpath -o build/envserver/app ./integration/envserver
	docker build -q -f deploy/scratch.Dockerfile -t $(GRAFT_IMAGE) build/graftd
	docker build -q -f deploy/scratch.Dockerfile -t $(GRAFT_ETCD_IMAGE) build/etcd
	docker build -q -f deploy/scratch.Dockerfile -t $(GRAFT_NATS_IMAGE) build/nats
	docker build -q -f deploy/scratch.Dockerfile -t $(GRAFT_ENVSERVER_IMAGE) build/envserver

COMPOSE := docker-compose -f deploy/docker-compose.yml

cluster: images ## run deploy/docker-compose.yml (etcd, NATS, graftd on 127.0.0.1:7520 and :7530); a failed start stops it all
	test -f deploy/keyring.json || go run ./cmd/graftd keyring init --keyring-file deploy/keyring.json
	$(COMPOSE) up -d || { $(COMPOSE) down; echo "cluster: start failed; stopped what had started" >&2; exit 1; }

cluster-down: ## stop the compose cluster (its data volumes stay)
	$(COMPOSE) down

integration: images ## run the Docker integration suite in integration/ (needs a Docker engine)
	TESTCONTAINERS_RYUK_DISABLED=true go test -tags integration -count=1 -timeout 20m -v ./integration/

bench: ## run the benchmarks (figures, never gates)
	go test -run '^$$' -bench . -benchtime 3s ./...

AGENTS ?= 10000
bench-agents: build ## run AGENTS (default 10000) idle graft-agents against one graftd process: its memory, and one change delivered to all
	./bin/graft-bench agents --count $(AGENTS)
bench-agents-bare: build ## the same with AGENTS bare watch streams instead of agents (no files, no reports): graftd's share of the delivery time
	./bin/graft-bench agents --bare --count $(AGENTS)
LEASES ?= 100000
bench-dbcred: build ## issue dynamic credentials on a PostgreSQL 15 of its own next to the database alone, hold LEASES (default 100000) live, drain 5000 expiring at once
	./bin/graft-bench dbcred --leases $(LEASES)
BROKER_FLAGS ?=
bench-broker: build ## pgbench TPC-B and select-only through graft-agent's credential broker, direct and through pgbouncer (installed if missing) on a PostgreSQL 15 of its own; BROKER_FLAGS adds flags
	command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || (apt-get update && apt-get install -y pgbouncer)
	./bin/graft-bench broker $(BROKER_FLAGS)

FUZZTIME ?= 30s
fuzz: ## run each fuzz target for FUZZTIME (default 30s): paths, patterns, policies
	go test -run '^$$' -fuzz '^FuzzParsePath$$' -fuzztime $(FUZZTIME) ./store/
	go test -run '^$$' -fuzz '^FuzzUnder$$' -fuzztime $(FUZZTIME) ./store/
	go test -run '^$$' -fuzz '^FuzzPatternMatch$$' -fuzztime $(FUZZTIME) ./acl/
	go test -run '^$$' -fuzz '^FuzzParsePolicy$$' -fuzztime $(FUZZTIME) ./acl/

generate: ## regenerate gen/ from proto/ with pinned buf and plugins
	$(BUF) lint
	rm -rf gen && $(BUF) generate

lint: ## go vet, gofmt and buf lint
	go vet ./...
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || (echo "gofmt: run gofmt -w on the files above" && exit 1)
	$(BUF) lint
