"""Real NFT datasets in one standard folder format: images + manifest.csv + datacard.json."""

from training.datasets.standard import MANIFEST_NAME, Dataset, load_dataset, write_dataset

__all__ = ["MANIFEST_NAME", "Dataset", "load_dataset", "write_dataset"]
