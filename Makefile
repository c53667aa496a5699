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

MODEL := --model resnet18 --weights DEFAULT --fallback-random --cache $(DEMO_CACHE)

demo: $(STAMP) $(DEMO)/.done
	@echo "== first run: every image is embedded"
	$(BIN)/headstart extract $(DEMO) $(MODEL)
	@echo "== second run: everything comes from the cache"
	$(BIN)/headstart extract $(DEMO) $(MODEL)
	$(BIN)/headstart info $(DEMO_CACHE)
	$(BIN)/headstart export $(DEMO_CACHE) --out demo/out/embeddings.npy
	@echo "== heads on the cached vectors: a sweep, the best saved"
	$(BIN)/headstart train $(DEMO) $(MODEL) --head logreg --head knn --head ncm --sweep --plot -o demo/out/head -q
	$(BIN)/headstart predict demo/out/head $(DEMO)/circles/circles_00.jpg $(DEMO)/stripes/stripes_00.jpg --cache $(DEMO_CACHE) --top-k 2 -q
	@echo "== nearest neighbours"
	$(BIN)/headstart index build $(DEMO) $(MODEL) -o demo/out/index -q
	$(BIN)/headstart knn demo/out/index $(DEMO)/squares/squares_00.jpg -k 3 --cache $(DEMO_CACHE) -q
	@echo "== fine-tuning end to end, starting from a logreg probe on the cache (1 epoch)"
	rm -rf demo/out/finetune
	$(BIN)/headstart finetune $(DEMO) $(MODEL) --epochs 1 -o demo/out/finetune -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/linear_probe.py
	$(BIN)/python bench/knn.py
	$(BIN)/python bench/cache_read.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/finetune.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) demo/images demo/out .pytest_cache .ruff_cache
