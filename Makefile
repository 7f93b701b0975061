# Two commands do everything on a fresh machine:  `make book`  and  `make test`.
# Both create (or reuse) the virtual environment .venv with the pinned set in requirements.lock.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MATHJAX := .cache/static/mathjax/tex-chtml.js
# the chapters in table-of-contents order (the order a reader meets them)
NOTEBOOKS := $(foreach f,$(shell sed -n 's/^ *- file: //p' _toc.yml),$(wildcard $(f).ipynb))
# pytest's cache would land in the book root and break the strict build: never write it
PYTEST := $(PY) -m pytest -p no:cacheprovider
export PYTHONDONTWRITEBYTECODE := 1
# every stage prints how long it took
timed = start=$$(date +%s); $(1); echo "[time] $(2): $$(( $$(date +%s) - start ))s"

.PHONY: book test lint unit model notebooks colab build browser execute bench student clean env

env: $(STAMP)

$(STAMP): pyproject.toml requirements.lock Makefile
	@command -v python3 >/dev/null || { echo "python3 (3.11 or newer) is needed"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[book,test,notebooks]"
	@# pydensecrf is the reference we compare against, not a requirement: its C++ build can
	@# fail on a reader's Python. CI requires it (DEEPLAB_EDU_REFERENCE=required).
	$(PY) -m pip install -q -c requirements.lock -e ".[reference]" || { \
	  if [ "$${DEEPLAB_EDU_REFERENCE:-}" = required ]; then echo "pydensecrf2 failed to install"; exit 1; fi; \
	  echo "WARNING: pydensecrf2 did not install; comparisons with it will say they were skipped"; }
	$(PY) -m pip check
	touch $(STAMP)

# MathJax from the npm registry, served with the site so that equations render offline
$(MATHJAX):
	@command -v npm >/dev/null || { echo "npm is needed to fetch MathJax for offline pages"; exit 1; }
	npm install --silent --no-audit --no-fund --prefix .cache/mathjax mathjax@3
	mkdir -p .cache/static
	@# only the TeX-to-HTML component and what it loads on demand (fonts, extensions, menu)
	rm -rf .cache/static/mathjax && mkdir -p .cache/static/mathjax
	cd .cache/mathjax/node_modules/mathjax/es5 && cp -r tex-chtml.js input output ui a11y sre adaptors \
	  $(CURDIR)/.cache/static/mathjax/

book: $(STAMP) $(MATHJAX)
	$(VENV)/bin/jupyter-book build . --keep-going
	@echo "Open file://$(CURDIR)/_build/html/index.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check deeplab_edu tests tools benchmarks book
	$(VENV)/bin/ruff format --check deeplab_edu tests tools benchmarks book/_ext

unit: $(STAMP)
	$(PYTEST) tests --durations=15

# the fast-mode models the chapters share (LargeFOV, and the equal-cost ASPP of "What came next"),
# trained once as their own visible step (cached under
# data/runs), so that no notebook cell trains while nbval times it
model: $(STAMP)
	$(PY) -m deeplab_edu.runs

notebooks: $(STAMP) model
	@for nb in $(NOTEBOOKS); do \
	  $(call timed,$(PYTEST) --nbval-lax --nbval-cell-timeout=3600 -q $$nb,notebook $$nb); \
	done

# every chapter as a Colab reader runs it: the package from a wheel, an empty folder, fast mode
colab: $(STAMP)
	$(PY) -m tools.colab_check

build: $(STAMP) $(MATHJAX)
	rm -rf _build/html
	$(VENV)/bin/jupyter-book build . -W --keep-going

browser: $(STAMP)
	$(PY) -m tools.browser_check _build/html

# `make lint` and `make unit` need no npm; `make test` fetches MathJax first, because the book
# build and the browser check's own tests (fixture pages with equations) need it
test: $(STAMP) $(MATHJAX)
	@$(call timed,$(MAKE) --no-print-directory lint,lint)
	@$(call timed,$(MAKE) --no-print-directory unit,unit tests)
	@$(call timed,$(MAKE) --no-print-directory model,the shared fast-mode models)
	@$(call timed,$(MAKE) --no-print-directory notebooks,all notebooks (nbval))
	@$(call timed,$(MAKE) --no-print-directory colab,all chapters as on Colab)
	@$(call timed,$(MAKE) --no-print-directory build,strict book build)
	@$(call timed,$(MAKE) --no-print-directory browser,browser check)

# re-run every chapter in place (fast mode) so that the committed outputs are fresh
execute: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
	  $(call timed,DEEPLAB_EDU_FAST=1 $(VENV)/bin/jupyter execute --inplace --timeout=3600 $$nb,execute $$nb); \
	done

# the student edition (_build/student: no solution cells) and the instructor's copy
student: $(STAMP)
	$(PY) -m tools.student_edition _build

bench: $(STAMP)
	@for b in benchmarks/*.py; do $(call timed,$(PY) $$b,$$b); done

clean:
	rm -rf _build .cache
