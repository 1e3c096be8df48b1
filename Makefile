# nftlens — the two commands a newcomer needs are `make serve` and `make test`.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
DATA      ?= data
SHARED    ?= ../shared/data
export NFTLENS_MODEL_DIR ?= models/default
export NFTLENS_CATALOG   ?= catalog/catalog.db

.PHONY: serve test install install-train install-gpu data catalog lint model clean

$(BIN)/uv:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv

install: $(BIN)/uv            ## serving install: no torch
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[data]'

install-train: $(BIN)/uv      ## + torch, timm, test tools
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[train,milvus,dev]'

install-gpu: install          ## swap onnxruntime for onnxruntime-gpu (never both in one env)
	$(BIN)/uv pip uninstall --python $(BIN)/python onnxruntime
	$(BIN)/uv pip install --python $(BIN)/python -q --reinstall onnxruntime-gpu

data: install                 ## fetch the pinned CryptoPunks and Nouns packages (once)
	@test -f $(DATA)/cryptopunks/manifest.csv || $(BIN)/nftlens data fetch cryptopunks --out $(DATA)
	@test -f $(DATA)/nouns/manifest.csv || $(BIN)/nftlens data fetch nouns --count 2000 --out $(DATA)

catalog: data                 ## index the demo catalog the first time
	$(BIN)/nftlens catalog index $(DATA)/cryptopunks --collection cryptopunks --if-empty
	$(BIN)/nftlens catalog index $(DATA)/nouns --collection nouns --if-empty
	$(BIN)/nftlens catalog reindex    # re-embeds tokens left by an older model (none: a no-op)

serve: catalog                ## install, fetch data, index, serve on http://127.0.0.1:8000
	$(BIN)/nftlens serve

test: install-train           ## lint + the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install-train
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

model: install-train data     ## reproduce the default model (needs $(SHARED): the nft-thumbs training set)
	@test -f $(DATA)/nft-thumbs/manifest.csv || $(BIN)/nftlens data import $(SHARED)/nft-thumbs --out $(DATA)/nft-thumbs
	@test -f $(DATA)/nft-collections/manifest.csv || $(BIN)/nftlens data import $(SHARED)/nft-collections --out $(DATA)/nft-collections
	$(BIN)/nftlens train --config training/configs/default-resnet18.yaml
	$(BIN)/nftlens export runs/default-resnet18/best.pt --out models/default
	$(BIN)/nftlens evaluate models/default --data $(DATA)/nft-collections --split all --label-field collection --denoise-sweep --out reports/default

clean:
	rm -rf $(VENV) catalog runs .pytest_cache
