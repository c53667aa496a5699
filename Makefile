# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.headstart-installed

.PHONY: demo test lint bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pinned here (not in pyproject) so other machines can bring their own CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e '.[dev-s3]'
	# autofaiss and embedding-reader (the clip-retrieval export tests) pin numpy<2, pandas<3
	# and faiss-cpu, which would replace the numpy 2, pandas 3 and faiss-gpu everything else
	# here runs on; they work with those, so they come without their pins.
	$(BIN)/python -m pip install --quiet --no-deps 'autofaiss>=2.15' 'embedding-reader>=1.5'
	touch $@

# The demo shows transfer learning working, offline, through the commands a user types; it
# pretrains its own backbone on digits 0-4 when torchvision's weights cannot be had (once: kept
# in demo/out/pretrained).
demo: $(STAMP)
	$(BIN)/python demo/run.py --out demo/out

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The page and report tests drive Debian's Chromium through playwright: playwright's own browser
# download needs a network. Installed once, as root or through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium >/dev/null || \
	    { $(SUDO) apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

test: lint chromium
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
	rm -rf $(VENV) demo/out .pytest_cache .ruff_cache
