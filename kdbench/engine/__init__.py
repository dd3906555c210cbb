"""The engine: trains a cohort of runs and writes each run's record. It knows nothing about
any method: it asks each Method what it needs, runs the teacher without gradients, runs
the student, sums the Method's named loss terms, steps, evaluates on val and test each
epoch, logs every term and checkpoints.

One module per step of a run, in the order a run meets them:

- ``options``: how runs are executed: what a caller asks for (``EngineOptions``: device,
  memory layout, where the training data lives; none of it is in a run's id) and what it
  comes to on the device at the recipe's precision (``Execution``: autocast, gradient
  scaling, layout, loader processes), resolved once per cohort.
- ``streams``: random streams, reseeded every epoch from (seed, epoch).
- ``schedule``: the optimizer and the learning-rate schedule.
- ``batches``: the data set's splits and each epoch's training batches (a loader, or the
  device-resident set; mixup / CutMix).
- ``trainee``: one run's student, method and optimizer (from the cohort's ``TraineeSetup``);
  the cohort's teacher.
- ``step``: one optimisation step (a cohort's, a trainee's, a stack of students').
- ``epoch``: a cohort set up for its epochs (``Cohort``); an epoch's steps, then evaluation,
  metrics and checkpoint per trainee.
- ``evaluation``: accuracy and logits on a split.
- ``checkpoint``: a trainee's epoch checkpoint, and resuming from it.
- ``record``: the run's record, test logits and weights.
- ``cohort``: ``train_cohort`` (set-up → epochs → records) and ``train_run``.

Reproducibility: every epoch reseeds the data stream and each run's stream from (seed,
epoch), so a run resumed from its last checkpoint produces exactly the metrics of an
uninterrupted one, and the same seed on the same CPU gives identical metrics (with
``workers=0``; loader processes persist through a run and are seeded once, so with
``workers>0`` a resumed run augments differently from an uninterrupted one, and GPU
kernels are not bit-exact in general).

Data-parallel: launched by ``torchrun`` (``WORLD_SIZE`` > 1), the same loop trains each run
over all the ranks (see ``kdbench.engine.distributed``): the epoch's permutation is cut into global
batches of ``recipe.batch_size`` and rank r takes the r-th slice of each (``EpochBatches``),
so the ranks together see exactly the single-process batches; each trainee's student and
method are one DistributedDataParallel module, each rank's loss is scaled so that the
averaged gradient is the global batch's mean loss gradient, BatchNorm uses the global
batch's statistics, loss sums, sample counts and val/test accuracy counts are summed over
ranks, and only rank 0 writes the run's files. The record equals a single-process run's up
to floating-point rounding, except where random numbers are drawn (augmentation, CRD's
negatives: each rank has its own streams). State kept across samples is kept equal by
the method through its ``TrainContext.gather`` (CRD's memory takes every rank's samples),
never by importing the engine's internals. Stacked students step in a single process only.
A last partial global batch is split as evenly as possible; if it holds fewer samples than
there are ranks it is dropped (only ever with several ranks).
"""

from .batches import EpochBatches, Indexed, ResidentTrainSet, TrainBatches, open_data
from .cohort import cohort_key, train_cohort, train_run
from .epoch import TrainingDiverged
from .evaluation import evaluate, topk_correct
from .options import EngineOptions, Execution, resolve_device, usable_cores
from .record import count_parameters, summarise
from .schedule import learning_rate
from .streams import RngStream, epoch_seed, seed_everything
from .trainee import Trainee, TraineeSetup, build_teacher, make_trainee

__all__ = [
    "EngineOptions", "EpochBatches", "Execution", "Indexed", "ResidentTrainSet", "RngStream", "TrainBatches",
    "Trainee", "TraineeSetup", "TrainingDiverged", "build_teacher", "cohort_key", "count_parameters", "epoch_seed", "evaluate",
    "learning_rate", "make_trainee", "open_data", "resolve_device", "seed_everything", "summarise",
    "topk_correct", "train_cohort", "train_run", "usable_cores",
]
