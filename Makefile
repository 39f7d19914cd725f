# The two commands of the README: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install lock lint format bench manage clean

LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock

# Exactly the locked versions, hashes checked (requirements-dev.lock: the dependencies and the dev extra), then the
# project itself without resolving anything. After changing pyproject.toml's dependencies: `make lock`.
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Both lock files from pyproject.toml, for Python 3.11 on any platform, with hashes: requirements.lock for the image,
# requirements-dev.lock for `make install`. Newest versions the constraints allow; commit both.
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command "make lock"
lock: $(STAMP)
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -o $(DEV_LOCK)

run: $(STAMP)
	$(PY) -m config.devstack run

test: $(STAMP)
	$(PY) -m config.devstack test $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m config.devstack exec $(PY) bench/campaign_list.py

# A management command against `make run`'s services, e.g. make manage ARGS="create_org acme --admin-email a@b.c"
manage: $(STAMP)
	$(PY) -m config.devstack exec $(PY) manage.py $(ARGS)

# The secrets docker-compose.yml requires, generated once (an existing .env is left as it is).
.env:
	umask 077 && $(PYTHON) -c "import base64, secrets; t = secrets.token_urlsafe; \
	print(f'SECRET_KEY={t(50)}\nPII_ENCRYPTION_KEYS=k1:{base64.b64encode(secrets.token_bytes(32)).decode()}'); \
	print(f'PII_HASH_KEY={t(50)}\nINBOUND_WEBHOOK_PASSWORD={t(24)}')" > .env

clean:
	rm -rf $(VENV) .data .pytest_cache
