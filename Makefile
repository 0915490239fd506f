# capguard: `make help` is the map of the project.
# Every target delegates to a script or a tool; nothing here is needed by CI, which
# runs .ci/run (hack/test.sh).

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= .venv/bin/python
IMAGE ?= capguard:0.1.0
INSTALLER ?= dist/install.yaml
NAMESPACE := capguard-system

.PHONY: help
help: ## List the targets with one line each
	@awk 'BEGIN {FS = ":.*## "} \
	  /^##@ / {printf "\n%s\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Develop
.PHONY: setup test lint demo e2e e2e-external chaos properties bench bench-scale bench-shards tools prometheusrule min-deps lock
setup: ## Create .venv and install capguard with its dev dependencies (hack/setup.sh)
	bash hack/setup.sh

test: ## Run every check CI runs: ruff, mypy, pytest (hack/test.sh)
	bash hack/test.sh

lint: setup ## Lint Python, shell scripts, alert rules and the Dockerfile
	.venv/bin/ruff check operator tests bench
	shellcheck -x hack/*.sh
	promtool check rules deploy/prometheus/alerts.yaml
	promtool test rules deploy/prometheus/alerts_test.yaml
	@if [ -x .venv/bin/hadolint ]; then .venv/bin/hadolint operator/Dockerfile; \
	  else echo "hadolint not installed (make tools): skipped"; fi

min-deps: ## Unit tests with every dependency at pyproject's lowest allowed version (hack/min-deps.sh)
	bash hack/min-deps.sh

lock: ## Refresh the image's pinned requirements (hack/lock.sh)
	bash hack/lock.sh

tools: ## Install promtool, shellcheck, hadolint, kubernetes-validate if missing
	bash hack/install-tools.sh

demo: ## Play the march-4 incident live on the embedded API server (hack/demo.sh)
	bash hack/demo.sh

e2e: setup ## Run the end-to-end suite on the embedded API server
	$(PYTHON) -m pytest tests/e2e

e2e-external: setup ## The end-to-end suite as against an existing cluster, the embedded server (HTTPS, RBAC) as that cluster
	bash hack/e2e-external.sh

chaos: setup ## Long chaos runs (10 freeze rounds, a 10-minute outage, 10 minutes of faults); prints figures
	@mkdir -p out
	CAPGUARD_CHAOS=soak $(PYTHON) -m pytest tests/e2e/test_chaos.py -s -p no:cacheprovider \
	  -o timeout=3600 2>&1 | tee out/chaos.log | grep -E '^chaos |passed|failed|Error'

properties: setup ## The property tests with new random examples, ROUNDS times (default 20); prints each failure
	@for round in $$(seq $${ROUNDS:-20}); do \
	  $(PYTHON) -m pytest tests/core tests/localcluster -q -p no:cacheprovider -rf \
	    --hypothesis-profile=explore 2>&1 | grep -E '^FAILED|passed|failed' \
	    | sed "s/^/round $$round: /" || true; done

bench: setup ## Run the benchmarks in bench/ on the embedded API server (bench-scale, bench-shards apart: they take long)
	@for script in $(filter-out bench/bench_scale.py bench/bench_shards.py,$(wildcard bench/*.py)); do echo "==> $$script"; $(PYTHON) "$$script"; done

bench-scale: setup ## How each measure of `capguard run` grows at 10k, 30k, 50k engines (SIZES=, ARGS= for bench_operator)
	$(PYTHON) bench/bench_scale.py $(if $(SIZES),--sizes $(SIZES)) $(ARGS)

bench-shards: setup ## Simulate 10 shards x 10,000 engines sharing one budget object (docs/scale.md; ARGS=)
	nice -n 19 $(PYTHON) bench/bench_shards.py $(ARGS)

prometheusrule: ## Regenerate deploy/prometheus/prometheusrule.yaml from alerts.yaml
	bash hack/gen-prometheusrule.sh

##@ Ship
.PHONY: image image-test docker-push build-installer kind-up kind-down e2e-kind
image: ## Build the operator image (IMAGE=capguard:0.1.0; needs Docker)
	docker build --tag '$(IMAGE)' --file operator/Dockerfile .

image-test: setup ## Build the image and run it in Docker as the kubelet runs deploy/ and deploy/demo/ (hack/image-test.sh)
	bash hack/image-test.sh

docker-push: ## Push the operator image IMAGE to its registry (IMAGE=REGISTRY/capguard:TAG)
	docker push '$(IMAGE)'

build-installer: ## Write dist/install.yaml: CRDs, namespace, RBAC and the operator at IMAGE, for kubectl apply -f
	bash hack/render.sh '$(IMAGE)' '$(INSTALLER)'

kind-up: ## Create kind cluster capguard, load the image, install CRDs, deploy (needs Docker, kind)
	IMAGE='$(IMAGE)' bash hack/kind-up.sh

kind-down: ## Delete kind cluster capguard
	bash hack/kind-down.sh

e2e-kind: ## Run the end-to-end suite against kind cluster capguard, its operator running in the cluster
	bash hack/e2e-kind.sh

.PHONY: kind-demo
kind-demo: ## Play the incident on kind with traffic: engine Pods, gateway, load Job (needs Docker, kind)
	bash hack/kind-demo.sh

##@ Deploy (the current kubectl context)
.PHONY: install uninstall deploy undeploy run
install: ## Install the CRDs only (kubectl apply -k crds/)
	kubectl apply -k crds/
	kubectl wait --for=condition=Established --timeout=60s --filename=crds/

uninstall: ## Delete capguard's CRDs, and with them EVERY InferenceEngine, ModelCapacity and CircuitBreaker
	kubectl delete -k crds/ --ignore-not-found

deploy: ## Install CRDs, RBAC and the operator at IMAGE (hack/render.sh IMAGE | kubectl apply -f -)
	bash hack/render.sh '$(IMAGE)' | kubectl apply --filename=-
	kubectl -n $(NAMESPACE) rollout status deployment/capguard-operator --timeout=180s

undeploy: ## Remove the operator (namespace capguard-system and its RBAC), keep CRDs and your objects
	kubectl delete namespace $(NAMESPACE) --ignore-not-found
	kubectl delete clusterrolebinding/capguard-operator clusterrole/capguard-operator --ignore-not-found

run: ## Run the operator here against the current context: agent driver, deployed Lease (hack/run.sh; ARGS=...)
	bash hack/run.sh $(ARGS)
