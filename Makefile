# The two commands of the README. Each installs what it needs into .venv first.
VENV ?= .venv
STAMP := $(VENV)/.sftune-install-stamp

.PHONY: demo test install bench

demo: $(STAMP)
	$(VENV)/bin/sftune demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	SFTUNE_VENV=$(VENV) ./scripts/install.sh
	touch $(STAMP)
