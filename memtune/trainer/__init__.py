"""The MoME engine: a frozen causal LM plus a bank of low-rank memory experts routed by a faiss index.

Two rooms. `mome/` is the memory a model answers with; `tuning/` builds it.

mome/ (what serving, generation and evaluation load)
- base.py        base model loading (alias -> packaged GGUF, converted once; local or s3 folders), the chat prompt
- keys.py        prompt tokens and routing keys (mean hidden state over the question's tokens)
- experts.py     the experts' hooks (batched, per-row top-k mixing)
- bank.py        the expert bank: in RAM (training) or read lazily from a run's shards (inference)
- index.py       the faiss index per index_method, with explicit fallbacks
- anchors.py     the gate's anchor words
- router.py      where experts are picked: key -> top-k -> anchors -> distance gate -> weights
- memory.py      Memory: layout, bank, keys, index, anchors in one object
- artifacts.py   run folders (safetensors, faiss bytes, manifest last), their verified loading, resolve_run
- devices.py     the device and dtype the engine runs in
- model.py       MemoryModel: base + memory as one object (load, generate, score, the training route)

tuning/ (what a job runs to build a memory)
- encode.py      the frozen pass: keys, prefix caches and answer regions
- assign.py      which expert each question uses (its own, or shared above index_max_size)
- calibrate.py   the gate's threshold
- region.py      the training forward over answer regions
- optim.py       row-sparse AdamW / Adafactor
- train.py       the working-set training loop
- checkpoint.py  resumable checkpoints every save_steps
- distributed.py ranks: which rank owns which fact, gloo/nccl, the collectives
- job.py         run_job: a whole MemoryTuningJob on this machine
- pod.py         the pod entrypoint (python -m memtune.trainer --spec FILE)
"""
