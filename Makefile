# nftlens — the two commands a newcomer needs are `make serve` and `make test`.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
DATA      ?= data
SHARED    ?= ../shared/data
export NFTLENS_MODEL_DIR ?= models/default
export NFTLENS_CATALOG   ?= catalog/catalog.db

.PHONY: serve test install install-train install-bench install-gpu data catalog lint model model-data outlier-data evaluate loo v21 previous int8 denoiser clean

$(BIN)/uv:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv

install: $(BIN)/uv            ## serving install: no torch
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[data]'

install-train: $(BIN)/uv      ## + torch, timm, test tools
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[train,milvus,dev]'

install-bench: install-train ## + LitServe and py-spy for `nftlens bench peers` (also needs: apt-get install wrk)
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[train,milvus,dev,bench]'

install-gpu: install          ## swap onnxruntime for onnxruntime-gpu (never both in one env)
	$(BIN)/uv pip uninstall --python $(BIN)/python onnxruntime
	$(BIN)/uv pip install --python $(BIN)/python -q --reinstall onnxruntime-gpu

data: install                 ## fetch the pinned CryptoPunks and Nouns packages (once)
	@test -f $(DATA)/cryptopunks/manifest.csv || $(BIN)/nftlens data fetch cryptopunks --out $(DATA)
	@test -f $(DATA)/nouns/manifest.csv || $(BIN)/nftlens data fetch nouns --count 2000 --out $(DATA)

catalog: data                 ## index the demo catalog the first time
	$(BIN)/nftlens catalog index $(DATA)/cryptopunks --collection cryptopunks 
	$(BIN)/nftlens catalog index $(DATA)/nouns --collection nouns 
	$(BIN)/nftlens catalog reindex    # re-embeds tokens left by an older model (none: a no-op)

serve: catalog                ## install, fetch data, index, serve on http://127.0.0.1:8000
	$(BIN)/nftlens serve

test: install-train           ## lint + the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install-train
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

TEST_SETS := --data $(DATA)/nft-collections@all --data $(DATA)/cryptopunks@test --data $(DATA)/nouns@test --data $(DATA)/nft-thumbs@test

model-data: install-train data
	@test -f $(DATA)/nft-thumbs/manifest.csv || $(BIN)/nftlens data import $(SHARED)/nft-thumbs --out $(DATA)/nft-thumbs
	@test -f $(DATA)/nft-collections/manifest.csv || $(BIN)/nftlens data import $(SHARED)/nft-collections --out $(DATA)/nft-collections

outlier-data: model-data      ## the DiceBear avatars that pick the multilayer unknown score's layers (needs Node.js)
	@test -f $(DATA)/avatars/manifest.csv || $(BIN)/nftlens data fetch avatars --count 3100 --out $(DATA)

model: outlier-data           ## reproduce the default model (needs $(SHARED): the nft-thumbs training set)
	$(BIN)/nftlens train --config training/configs/default-resnet18.yaml
	$(BIN)/nftlens train --config training/configs/default-resnet18-continue.yaml
	$(BIN)/nftlens train --config training/configs/default-resnet18-copies.yaml
	$(BIN)/nftlens refit-head runs/default-resnet18-copies/best.pt --out runs/default-resnet18-copies-head --epochs 2
	$(BIN)/nftlens export runs/default-resnet18-copies-head/best.pt --out models/default
	$(BIN)/nftlens uint8-input models/default   # pixels in, normalising inside the graph
	$(BIN)/nftlens stage-stats models/default   # per-stage channel statistics for the multilayer unknown score
	$(BIN)/nftlens whiten models/default        # collections further apart in the embedding (training/whiten.py)
	$(BIN)/nftlens refit-instance models/default --weight background_swap=4   # the instance head again, with real background swaps (training/instancerefit.py)
	$(BIN)/nftlens calibrate models/default --method $(OPENSET) --outliers $(DATA)/avatars --out reports/default
	$(MAKE) evaluate

OPENSET ?= multilayer
evaluate: model-data          ## every report of the shipped model, on data it never trained on
	$(BIN)/nftlens evaluate models/default $(TEST_SETS) --label-field collection --denoise-sweep --out reports/default
	$(BIN)/nftlens copies evaluate models/default --out reports/copies
	$(BIN)/nftlens copies evaluate models/default --verify-k 0 --out reports/copies/without-layout
	$(BIN)/nftlens copies twins --out reports/copies
	$(BIN)/nftlens report compare "v2.1.0=reports/v2.1.0" "shipped (v2.2.0)=reports/default" --out reports/comparison-v2.2

loo: outlier-data             ## leave-one-collection-out open-set study (trains 4 models)
	$(BIN)/nftlens loo --config training/configs/default-resnet18.yaml --outlier-check $(DATA)/avatars --out reports/openset

V21 ?= 9632411
v21: model-data               ## the v2.1.0 model v2.2.0 replaced, re-evaluated into reports/v2.1.0 (same sets, same commands)
	mkdir -p runs/v21 && for f in model.onnx model.json openset.npz; do git show $(V21):models/default/$$f > runs/v21/$$f; done
	$(BIN)/nftlens evaluate runs/v21 $(TEST_SETS) --label-field collection --denoise-sweep --no-update-manifest --out reports/v2.1.0
	$(BIN)/nftlens copies evaluate runs/v21 --verify-k 0 --out reports/v2.1.0/copies

PREVIOUS ?= dc0fe89
previous: model-data          ## the model this one replaced, evaluated on the same test sets and catalog
	mkdir -p runs/previous && git show $(PREVIOUS):models/default/model.onnx > runs/previous/model.onnx
	git show $(PREVIOUS):models/default/model.json > runs/previous/model.json
	$(BIN)/nftlens evaluate runs/previous $(TEST_SETS) --label-field collection --no-update-manifest --out reports/previous
	$(BIN)/nftlens copies evaluate runs/previous --verify-k 0 --space embedding --holdout $(DATA)/nft-collections --out reports/previous/copies

clean:
	rm -rf $(VENV) catalog runs .pytest_cache

int8: outlier-data            ## the int8 variant of the default model: quantise, calibrate and evaluate it
	$(BIN)/nftlens quantize models/default --out models/default-int8
	$(BIN)/nftlens stage-stats models/default-int8
	$(BIN)/nftlens whiten models/default-int8
	$(BIN)/nftlens calibrate models/default-int8 --method $(OPENSET) --outliers $(DATA)/avatars --out reports/int8
	$(BIN)/nftlens evaluate models/default-int8 $(TEST_SETS) --label-field collection --no-robustness --out reports/int8
	$(BIN)/nftlens copies evaluate models/default-int8 --verify-k 0 --out reports/int8/copies
	$(BIN)/nftlens copies evaluate models/default-int8 --out reports/int8/copies-checked

DENOISE_SWEEP_SETS ?= $(TEST_SETS)
denoiser: model-data          ## the learned denoiser: train + export, PSNR/SSIM table, the classifier's denoise sweep
	$(BIN)/nftlens train-denoiser --out models/denoiser
	$(BIN)/nftlens denoise-eval --denoiser models/denoiser --out reports/denoise
	$(BIN)/nftlens evaluate models/default $(DENOISE_SWEEP_SETS) --label-field collection --no-robustness --denoise-sweep --denoiser models/denoiser --no-update-manifest --out reports/denoise/sweep
