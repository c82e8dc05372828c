# ecpower: `make demo` to try it, `make test` to check it. See README.md.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE ?= demo.myshopify.com
DEMO_CUSTOMERS ?= 5000
DEMO_SEED ?= 1
ADMIN_USER ?= admin
PORT ?= 8000
EMULATOR_PORT ?= 8765
CHANNELTALK_PORT ?= 8766
PG_URL := postgres://postgres@127.0.0.1:5432/ecpower

.PHONY: venv demo test test-sqlite test-postgres lint bench bench-admin bench-tags messages clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

# Embedded default: SQLite file db.sqlite3, database task broker, development settings.
# "Shopify" is the local emulator (integrations/shopify/emulator), seeded with the demo store.
demo: export DJANGO_DEBUG = 1
demo: export SHOPIFY_ADMIN_URL = http://127.0.0.1:$(EMULATOR_PORT)/{shop}
demo: venv
	@test -f .env || { echo "DJANGO_DEBUG=1" > .env; echo "Wrote .env (DJANGO_DEBUG=1) so manage.py works in this checkout."; }
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py generate_demo_store --store $(DEMO_STORE) --customers $(DEMO_CUSTOMERS) --seed $(DEMO_SEED) --replace
	$(BIN)/python manage.py segments templates --store $(DEMO_STORE)
	$(BIN)/python manage.py segments recompute --store $(DEMO_STORE)
	$(BIN)/python manage.py metrics backfill --store $(DEMO_STORE) --queue
	$(BIN)/python manage.py ensure_admin --username $(ADMIN_USER)
	$(BIN)/python manage.py shopify connect --store $(DEMO_STORE) --token shpat_demo --secret demo-webhook-secret --no-check
	$(BIN)/python manage.py channeltalk connect --store $(DEMO_STORE) --key ct-key --secret ct-secret --url http://127.0.0.1:$(CHANNELTALK_PORT) --segments repeaters,dormant
	@echo "Serving http://127.0.0.1:$(PORT)/admin/ with the Shopify emulator on :$(EMULATOR_PORT) and Channel Talk's on :$(CHANNELTALK_PORT) (Ctrl-C stops all)"
	trap 'kill 0' INT TERM EXIT; \
	$(BIN)/python manage.py shopify emulator --port $(EMULATOR_PORT) --seed-store $(DEMO_STORE) --token shpat_demo --secret demo-webhook-secret & \
	$(BIN)/python manage.py channeltalk emulator --port $(CHANNELTALK_PORT) & \
	$(BIN)/python manage.py qcluster & \
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

# The whole suite: on PostgreSQL when DATABASE_URL is set or 127.0.0.1:5432 answers, else on SQLite.
test: venv
	@if [ -z "$$DATABASE_URL" ] && $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1)" 2>/dev/null; then \
		echo "make test: PostgreSQL at 127.0.0.1:5432"; export DATABASE_URL=$(PG_URL); \
	else echo "make test: $${DATABASE_URL:-SQLite}"; fi; \
	$(BIN)/pytest

test-postgres: venv
	DATABASE_URL=$${DATABASE_URL:-$(PG_URL)} $(BIN)/pytest

test-sqlite: venv
	DATABASE_URL=sqlite:///$(CURDIR)/test.sqlite3 $(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	DJANGO_DEBUG=1 DATABASE_URL=sqlite://:memory: $(BIN)/python manage.py makemigrations --check --dry-run

# Benchmarks on PostgreSQL in their own database, the multi-store run on Redis database 7
# (docs/performance.md); results in bench-results/. BENCH_CUSTOMERS=1000000 for the full-size run.
BENCH_CUSTOMERS ?= 100000
BENCH_STORES ?= 200
BENCH_STORE_CUSTOMERS ?= 5000
BENCH_BIG_STORE ?= 200000
BENCH_URL := postgres://postgres@127.0.0.1:5432/ecpower_bench
BENCH_REDIS := redis://127.0.0.1:6379/7
bench: venv
	createdb -h 127.0.0.1 -U postgres ecpower_bench 2>/dev/null || true
	DATABASE_URL=$(BENCH_URL) DJANGO_DEBUG=1 $(BIN)/python manage.py migrate --noinput -v0
	DATABASE_URL=$(BENCH_URL) DJANGO_DEBUG=1 $(BIN)/python tests/bench/suite.py --customers $(BENCH_CUSTOMERS)
	DATABASE_URL=$(BENCH_URL) DJANGO_DEBUG=1 REDIS_URL=$(BENCH_REDIS) $(BIN)/python tests/bench/multistore.py \
		--stores $(BENCH_STORES) --store-customers $(BENCH_STORE_CUSTOMERS) --big-store $(BENCH_BIG_STORE)

# The admin pages a CRM user opens, timed in headless Chromium on the store make bench left (run it first).
bench-admin: venv
	DATABASE_URL=$(BENCH_URL) $(BIN)/python tests/bench/admin_pages.py

# Only the tag-sync throughput benchmark (about 2 minutes: the per-call path waits for Shopify's bucket).
bench-tags: venv
	createdb -h 127.0.0.1 -U postgres ecpower_bench 2>/dev/null || true
	DATABASE_URL=$(BENCH_URL) DJANGO_DEBUG=1 $(BIN)/python manage.py migrate --noinput -v0
	DATABASE_URL=$(BENCH_URL) DJANGO_DEBUG=1 $(BIN)/python tests/bench/tag_sync_throughput.py

# Refresh the Japanese catalogue after changing UI text (then translate the new entries in locale/ja).
messages: venv
	DJANGO_DEBUG=1 $(BIN)/python manage.py makemessages -l ja --ignore=.venv --ignore=tests
	DJANGO_DEBUG=1 $(BIN)/python manage.py compilemessages --ignore=.venv

clean:
	rm -rf $(VENV) db.sqlite3* media staticfiles .pytest_cache .hypothesis
