"""The memory a model answers with: base model, keys, experts, index, gate, router, artifacts, generation."""
