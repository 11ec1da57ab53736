"""sae1n: weakly supervised single-neuron phenotype identification in pathology embeddings."""

__version__ = "0.1.0"
