# The two commands of the README. Each installs what it needs into .venv first.
VENV ?= .venv
STAMP := $(VENV)/.sftune-install-stamp

.PHONY: demo test install bench lock

demo: $(STAMP)
	$(VENV)/bin/sftune demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

install: $(STAMP)

# Refresh requirements/lock.txt to the newest versions pyproject.toml allows, then run the suite on them.
lock:
	./scripts/lock.sh

$(STAMP): pyproject.toml scripts/install.sh requirements/lock.txt
	SFTUNE_VENV=$(VENV) ./scripts/install.sh
	touch $(STAMP)
