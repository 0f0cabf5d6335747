"""`memtune serve`: an OpenAI-compatible HTTP server over a tuned memory (or a base model).

protocol.py (wire format, errors) -> app.py (FastAPI handlers, SSE) -> batcher.py (one thread, batched decoding)
-> engine.py (the only module that calls the trainer's engine); reload.py swaps in newer committed runs;
metrics.py holds the Prometheus metrics. Needs the `serve` extra (FastAPI, uvicorn, prometheus_client) and the
`trainer` extra.
"""
