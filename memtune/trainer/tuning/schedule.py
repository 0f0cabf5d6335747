"""Lamini's `finetune_args` -> the memory experts' schedule: their step size and how many facts train at once.

    schedule = plan_schedule(job.spec.finetuneArgs, job.spec.memory.batchSize, questions=len(examples))
    train_experts(setup, schedule.trainer_args(args), ...)

**The rate.** `learning_rate` is read on Lamini's scale, where its recipes live (docs, "Memory Tuning": 3e-4 for
tens of facts, 9e-5 for 800+, 1e-5 for text-to-SQL, 3e-4 for 10,000; default 9e-4). The experts' optimizer is
normalised (Adafactor clips each update to RMS 1, so each entry of an expert moves by about `lr` per update, and an
expert's output by about `lr * r_value`, all `r` rows of its B moving together), and at Lamini's rates they barely
move: the small-data recipe taken literally learned 0 of 15 facts in its 50 steps. So::

    expert_lr = REFERENCE_STEP / r_value * (learning_rate / LAMINI_DEFAULT_LR) ** RATE_EXPONENT

- `REFERENCE_STEP / r_value`: at Lamini's default rate an expert's output moves by REFERENCE_STEP per update,
  whatever its rank; a rank-16 expert then steps at 1e-2, where a fact takes about REFERENCE_UPDATES updates.
- `** RATE_EXPONENT` (a square root): the user's rate still orders runs (lower is gentler and slower), but a 100x
  lower rate makes a 10x smaller step, not a 100x one. Lamini lowers its rate as data grows because one adapter
  holds every fact; here each fact has its own expert, so its step need not shrink with the data. With the square
  root every documented recipe converges inside its own budget (README, "Lamini's recipes").

**The working set.** At a step of s = expert_lr * r_value a fact needs about
REFERENCE_UPDATES * max(1, REFERENCE_STEP / s) ** UPDATES_EXPONENT consecutive updates (measured on 15 facts at ranks
16 to 64). The trainer fits `batchSize * gradient_accumulation_steps` facts into one update; when N facts times that
many updates (times MARGIN) would not fit in `max_steps`, more facts share each update (more micro-batches, at
most N), so every fact gets its updates within the budget. A step is still one optimizer update; only how many
facts it carries changes, and the work per fact is the same.

The mapping lives here alone; `memtune.json` records the schedule a run used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from memtune.spec import FinetuneArgs

LAMINI_DEFAULT_LR = 9.0e-4
"""Lamini's default `learning_rate` (and FinetuneArgs'): the rate that gives the reference step."""
REFERENCE_STEP = 0.16
"""`expert_lr * r_value` at Lamini's default rate (1e-2 at rank 16)."""
RATE_EXPONENT = 0.5
REFERENCE_UPDATES = 20.0
"""Updates a fact takes at the reference step (15 facts: 20-23 at rank 16; see the README's recipe table)."""
UPDATES_EXPONENT = 0.66
"""Below the reference step updates grow as step ** -0.66 (50 at a quarter of it: rank 32, expert lr 1.25e-3); above
it they stay near REFERENCE_UPDATES (23 at four times it, with a noisier loss), so the estimate never drops below."""
MARGIN = 1.5
"""Head room on the estimate (facts relapse, some answers are long)."""


@dataclass(frozen=True)
class Schedule:
    expert_lr: float
    """Step size of the experts' optimizer."""
    updates_per_fact: int
    """Estimated consecutive updates a fact needs at that step."""
    facts_per_step: int
    """Facts carried by one optimizer update (batchSize * micro_batches)."""
    micro_batches: int
    """Micro-batches per update: `gradient_accumulation_steps`, or more when the budget needs it."""

    def trainer_args(self, args: FinetuneArgs) -> FinetuneArgs:
        """The finetune args as the trainer applies them: the mapped rate and the micro-batches per update."""
        return args.model_copy(
            update={"learning_rate": self.expert_lr, "gradient_accumulation_steps": self.micro_batches}
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def expert_rate(learning_rate: float, r_value: int) -> float:
    """The experts' step size for Lamini's `learning_rate` at rank `r_value` (see the module docstring)."""
    return REFERENCE_STEP / r_value * (learning_rate / LAMINI_DEFAULT_LR) ** RATE_EXPONENT


def updates_needed(expert_lr: float, r_value: int) -> int:
    """Estimated consecutive updates a fact takes at this step size."""
    step = expert_lr * r_value
    return math.ceil(REFERENCE_UPDATES * max(1.0, REFERENCE_STEP / step) ** UPDATES_EXPONENT)


def plan_schedule(args: FinetuneArgs, batch_size: int, questions: int) -> Schedule:
    """The schedule of a job with `questions` distinct questions and micro-batches of `batch_size`."""
    rate = expert_rate(args.learning_rate, args.r_value)
    updates = updates_needed(rate, args.r_value)
    wanted = math.ceil(questions * updates * MARGIN / args.max_steps)
    facts = min(max(batch_size * args.gradient_accumulation_steps, wanted), max(questions, 1))
    micro_batches = max(args.gradient_accumulation_steps, math.ceil(facts / batch_size))
    return Schedule(rate, updates, batch_size * micro_batches, micro_batches)
