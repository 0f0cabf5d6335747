"""Evaluation: the baseline ladder (base, prompt, RAG, LoRA, MoME), its metrics, reports and the learning-rate sweep.

Where things are:
- metrics.py: exact match (normalisation documented there), token F1, locality, teacher-forced token accuracy;
- sql.py: execution accuracy on SQLite; scoring.py: answers → table rows; report.py: Markdown + PNG;
- prompts.py / retrieval.py: the prompt and RAG rungs; lora.py: the LoRA rung; mome.py: the engine's extras;
- causal.py: greedy decoding and teacher forcing of plain transformers models; ladder.py: runs the rungs;
- sweep.py: one short job per learning rate; cli.py: `memtune eval` and `memtune sweep`.

Only metrics, sql, scoring, prompts and report are torch-free; the rest import torch/transformers.
"""

import os

# Offline before any submodule imports transformers: a missing file must fail, never trigger a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
