# Two commands do everything on a fresh machine:  `make book`  and  `make test`.
# Both create (or reuse) the virtual environment .venv with the pinned set in requirements.lock.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MATHJAX := .cache/static/mathjax/tex-chtml.js
# every chapter is executed once per run (tools/chapters.py), into EXECUTED; the checks and the
# website are derived from those executed notebooks
EXECUTED := _build/executed
SITE := _build/site
# pytest's cache would land in the book root and break the strict build: never write it
PYTEST := $(PY) -m pytest -p no:cacheprovider
export PYTHONDONTWRITEBYTECODE := 1
# every stage prints how long it took
timed = start=$$(date +%s); $(1); echo "[time] $(2): $$(( $$(date +%s) - start ))s"

.PHONY: book test lint unit slow slow-beside-chapters model chapters check build browser execute figures bench gpu-check student clean env

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

# the website (the student edition of the chapters executed once, fast mode on this machine),
# execution off
book: $(STAMP) $(MATHJAX) chapters
	$(PY) -m tools.chapters stage $(EXECUTED) $(SITE)
	$(VENV)/bin/jupyter-book build $(SITE) --path-output . --keep-going
	@echo "Open file://$(CURDIR)/_build/html/index.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check deeplab_edu tests tools benchmarks book
	$(VENV)/bin/ruff format --check deeplab_edu tests tools benchmarks book/_ext
	$(VENV)/bin/mypy

# the fast tier (under a minute idle); `make slow` runs the rest, `make test` both
unit: $(STAMP)
	$(PYTEST) tests -m "not slow" --durations=10

slow: $(STAMP)
	$(PYTEST) tests -m slow --durations=10

# train the shipped fast-mode networks anew (deeplab_edu/trained): after any change to training,
# the teaching set or the networks (the fast tier fails until then, naming this command). One
# PyTorch thread, as the chapters run, so that the training chapter's own run is the shipped
# one to the last bit on a machine like CI's
model: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m deeplab_edu.runs --refresh

# every chapter executed once as a Colab reader runs it (the package from a wheel, an empty
# folder, ./data, fast mode), saved into $(EXECUTED)
chapters: $(STAMP)
	$(PY) -m tools.chapters execute $(EXECUTED)

# the slow tier (one PyTorch thread) beside the chapters (two at a time, one thread each): three
# single-threaded processes keep two cores busy; the slow tier's report follows the chapters'
slow-beside-chapters: $(STAMP)
	@mkdir -p _build
	@OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(MAKE) --no-print-directory slow > _build/slow.log 2>&1 & \
	slow=$$!; status=0; \
	$(MAKE) --no-print-directory chapters || status=1; \
	wait $$slow || status=1; cat _build/slow.log; exit $$status

# the executed chapters against the committed outputs (# NBVAL_CHECK_OUTPUT cells, nbval's
# semantics), and the student edition's names
check: $(STAMP)
	$(PY) -m tools.chapters check $(EXECUTED)

# the strict build of the executed chapters (execution off: the site shows what was checked)
build: $(STAMP) $(MATHJAX)
	$(PY) -m tools.chapters stage $(EXECUTED) $(SITE)
	rm -rf _build/html
	$(VENV)/bin/jupyter-book build $(SITE) --path-output . -W --keep-going

browser: $(STAMP)
	$(PY) -m tools.browser_check _build/html

# `make lint` and `make unit` need no npm; `make test` fetches MathJax first, because the book
# build and the browser check's own tests (fixture pages with equations) need it
test: $(STAMP) $(MATHJAX)
	@$(call timed,$(MAKE) --no-print-directory lint,lint)
	@$(call timed,$(MAKE) --no-print-directory unit,unit tests (fast tier))
	@$(call timed,$(MAKE) --no-print-directory slow-beside-chapters,slow tier and chapters)
	@$(call timed,$(MAKE) --no-print-directory check,checked outputs and student edition)
	@$(call timed,$(MAKE) --no-print-directory figures,figures for slides)
	@$(call timed,$(MAKE) --no-print-directory build,strict book build)
	@$(call timed,$(MAKE) --no-print-directory browser,browser check)

# re-run every chapter (fast mode, as on Colab) and write its outputs into book/
execute: $(STAMP) chapters
	$(PY) -m tools.chapters write-back $(EXECUTED)

# the GPU check (tools/gpu_check.py; `python -m tools.gpu_check --dry` is its CPU stand-in, run
# by the unit tests): on a machine with CUDA, with the python3 that holds PyTorch there (no
# virtual environment, nothing installed); writes benchmarks/results/gpu-check-<device>-<time>.json
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) -m tools.gpu_check --out benchmarks/results

# the student edition (_build/student: a whole book, no solution; the website is built from it)
# and the instructor's copy with its key (_build/instructor: on no website)
student: $(STAMP)
	$(PY) -m tools.student_edition _build

# every chapter's figures as PNG and SVG for slides (_build/figures/<chapter>/), from the chapters
# executed by `make chapters` or `make book` (nothing is run again)
figures: $(STAMP)
	$(PY) -m tools.figures $(EXECUTED) _build/figures

bench: $(STAMP)
	@for b in benchmarks/*.py; do $(call timed,$(PY) $$b,$$b); done

clean:
	rm -rf _build .cache
