"""batchpipe: LLM jobs over GitHub issues through the providers' Batch APIs, as a Snakemake pipeline."""

__version__ = "0.1.0"
