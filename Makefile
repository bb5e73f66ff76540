# lapis.layers: `make demo` and `make test` are the two commands a newcomer needs.
# Everything else here is a step of one of them.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
SHARED ?= $(abspath $(CURDIR)/../shared)
BUILD := $(CURDIR)/build
COLL := $(BUILD)/ansible_collections/lapis/layers
ANSIBLE_ENV := ANSIBLE_COLLECTIONS_PATH=$(BUILD)/collections ANSIBLE_PYTHON_INTERPRETER=$(VENV)/bin/python \
	ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false PATH=$(VENV)/bin:$$PATH
PYTEST := LAPIS_SHARED=$(SHARED) LAPIS_VENV=$(VENV) $(VENV)/bin/python -m pytest -p no:cacheprovider

.PHONY: demo test deps test-deps lint unit sanity integration system collection-link collection-copy clean

demo: deps collection-link
	$(ANSIBLE_ENV) $(VENV)/bin/ansible-playbook -i localhost, -c local playbooks/demo.yml

test: test-deps lint unit system integration sanity
	@echo "make test: all suites passed"

deps: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: requirements/apt.txt requirements/python.txt
	scripts/install-system requirements/apt.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/python.txt
	touch $@

test-deps: deps $(VENV)/.test-deps-stamp

$(VENV)/.test-deps-stamp: requirements/apt-test.txt requirements/python-test.txt
	scripts/install-system requirements/apt-test.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/python-test.txt
	scripts/ansible-test-bootstrap $(VENV)
	touch $@

# The collection as Ansible finds it: a symlink for playbooks and tests ...
collection-link:
	@mkdir -p $(BUILD)/collections/ansible_collections/lapis
	@ln -sfn $(CURDIR) $(BUILD)/collections/ansible_collections/lapis/layers

# ... and a real copy for ansible-test, which insists on the directory layout.
collection-copy:
	scripts/collection-copy $(CURDIR) $(COLL) $(SHARED) $(VENV)

lint: test-deps collection-link
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd $(BUILD)/collections && $(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p ansible_collections.lapis.layers.plugins -p ansible_collections.lapis.layers.tests
	cd $(BUILD)/collections && $(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml $(CURDIR)/bench/*.py

unit: test-deps collection-link
	$(PYTEST) tests/unit

system: test-deps collection-link
	$(ANSIBLE_ENV) $(PYTEST) tests/system

integration: test-deps collection-copy
	cd $(COLL) && $(ANSIBLE_ENV) $(VENV)/bin/ansible-test integration --allow-destructive \
		--python 3.11 --color no $(TARGETS)

sanity: test-deps collection-copy
	cd $(COLL) && $(VENV)/bin/ansible-test sanity --python 3.11 --color no $(SANITY_ARGS)

clean:
	rm -rf $(BUILD) tests/output
