# The two commands of the README: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install lint format bench manage clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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
