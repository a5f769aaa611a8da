# graft — run `make help` for the targets.
BUF := go run github.com/bufbuild/buf/cmd/buf@v1.75.0
GO_TEST_FLAGS ?= -race -count=1 -timeout 15m

.PHONY: help run build test bench fuzz generate lint fmt

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

run: ## start graftd in dev mode (embedded etcd and NATS, data in ./graft-data)
	go run ./cmd/graftd --dev

build: ## build the binaries in cmd/ into ./bin (static, CGO_ENABLED=0)
	CGO_ENABLED=0 go build -o bin/ ./cmd/...

test: ## run every unit and in-process test with the race detector
	go test $(GO_TEST_FLAGS) ./...

bench: ## run the benchmarks (figures, never gates)
	go test -run '^$$' -bench . -benchtime 3s ./...

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
