"""`python -m memtune.trainer --spec FILE`: the trainer pod's command (see pod.py)."""

from memtune.trainer.tuning.pod import main

raise SystemExit(main())
