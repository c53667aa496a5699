# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.headstart-installed
DEMO   := demo/images
DEMO_CACHE := demo/out/cache

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pinned here (not in pyproject) so other machines can bring their own CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(DEMO)/.done: demo/make_images.py | $(STAMP)
	$(BIN)/python demo/make_images.py $(DEMO)
	touch $@

demo: $(STAMP) $(DEMO)/.done
	@echo "== first run: every image is embedded"
	$(BIN)/headstart extract $(DEMO) --model resnet18 --weights DEFAULT --fallback-random --cache $(DEMO_CACHE)
	@echo "== second run: everything comes from the cache"
	$(BIN)/headstart extract $(DEMO) --model resnet18 --weights DEFAULT --fallback-random --cache $(DEMO_CACHE)
	$(BIN)/headstart info $(DEMO_CACHE)
	$(BIN)/headstart export $(DEMO_CACHE) --out demo/out/embeddings.npy

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/extract.py

clean:
	rm -rf $(VENV) demo/images demo/out .pytest_cache .ruff_cache
