# The README's two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TYPED  := cdc connectors sinks

.PHONY: demo test lint typecheck unit integration bench install servers clean

## install: the virtualenv with cdc and its dev tools (re-run when pyproject.toml changes)
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,all]'
	touch $@

## servers: the database and broker server binaries the tests and the demo start, and java for
## the Flink-based Debezium consumer test (apt, when root)
servers:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v pg_recvlogical >/dev/null || ls /usr/lib/postgresql/*/bin/pg_recvlogical >/dev/null 2>&1 || missing="$$missing postgresql-client"; \
	command -v mariadbd >/dev/null || test -x /usr/sbin/mariadbd || missing="$$missing mariadb-server"; \
	command -v mariadb >/dev/null || missing="$$missing mariadb-client"; \
	command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || missing="$$missing nats-server"; \
	command -v redis-server >/dev/null || test -x /usr/bin/redis-server || missing="$$missing redis-server"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "missing server packages:$$missing (install them with apt, or run make as root)"; exit 1; fi; \
	fi

lint: install
	$(BIN)/ruff check $(TYPED) tests integration bench

typecheck: install
	$(BIN)/mypy --strict $(TYPED)

unit: install
	$(BIN)/pytest tests -q

integration: install servers
	$(BIN)/pytest integration -q

## test: everything CI runs
test: install servers lint typecheck
	$(BIN)/pytest -q

## demo: a disposable PostgreSQL, a shop workload, cdc streaming it, and a summary
demo: install servers
	$(BIN)/python -m cdc.demo

## bench: every benchmark scenario (about 15 minutes); JSON and a Markdown table in bench/results/
bench: install servers
	$(BIN)/python -m bench.suite --readme

clean:
	rm -rf $(VENV) .demo .cdc-state .mypy_cache .ruff_cache .pytest_cache .hypothesis

## soak: the differential test (integration/differential) over new seeds for MINUTES (default 30), or
## one seed: make soak SEED=3; prints each seed's transactions, changes and pass/FAIL, then the failing seeds
MINUTES ?= 30
.PHONY: soak
soak: install servers
	$(BIN)/python -m bench.soak $(if $(SEED),--seed $(SEED),--minutes $(MINUTES))
