"""The MoME engine: a frozen causal LM plus a bank of low-rank memory experts routed by a faiss index.

Where things are:
- models.py     base model loading (alias -> packaged GGUF, converted once) and the one chat prompt
- encode.py     the frozen pass: routing keys, prefix caches and answer regions
- experts.py    the expert bank and the hooks that apply it (batched, per-row top-k)
- bank.py       which expert each question uses (its own, or shared above index_max_size)
- index.py      faiss index per index_method, with explicit fallbacks
- router.py     where experts are picked: key -> top-k -> weights -> distance gate
- calibrate.py  the gate's threshold
- region.py     the training forward over answer regions
- optim.py      row-sparse AdamW / Adafactor
- train.py      the working-set training loop
- artifacts.py  run folders (safetensors, faiss bytes, manifest last) and their verified loading
- job.py        run_job: a whole MemoryTuningJob on this machine
- inference.py  load_generator / Generator.generate
- distributed.py  ranks: which rank owns which fact, gloo/nccl, the collectives
- checkpoint.py   resumable checkpoints every save_steps
- pod.py          the pod entrypoint (python -m memtune.trainer --spec FILE)
"""
