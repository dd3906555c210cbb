"""Candidate offline regimes, one model at a time, without the harness: how far a model gets
on a variant of the ``accents`` set in a given number of epochs.

    python benchmarks/offline_candidates.py MODEL EPOCHS [OPTION=VALUE ...]
    python benchmarks/offline_candidates.py resnet8 15 train_per_class=160   # the suites' set
    python benchmarks/offline_candidates.py resnet20 30 train_per_class=160 seed=1 threads=2

A plain loop with the offline suites' recipe (SGD 0.05, momentum 0.9, weight decay 5e-4,
batch 64, cosine to zero per step, the set's padded random crop), NCHW, one thread and
seed 0 unless ``threads=`` and ``seed=`` say otherwise; the other options are the set's
(its defaults unless given), trained on the official training split less its 10%
validation split. Prints one JSON line: the options, test top-1 at every fifth and the
last four epochs, the last batch's loss and the seconds. docs/suites-and-protocols.md
("The offline regime") gives what it measured: it is how the offline regime was chosen,
quicker than a suite per candidate.
"""

from __future__ import annotations

import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from kdbench.data import create_dataset
from kdbench.models import create_model


def main(model_name: str, epochs: int, options: dict[str, str]) -> dict:
    typed = {key: json.loads(value) if value[:1].isdigit() or value[:1] == "-" else value for key, value in options.items()}
    seed, threads = typed.pop("seed", 0), typed.pop("threads", 1)
    torch.set_num_threads(threads)
    splits = create_dataset("accents", seed=0, val_fraction=0.1, **typed)
    train_x = (splits.train.official().images[splits.train.indices].float() / 255 - 0.5) / 0.5
    test_x, train_y, test_y = (splits.test.images.float() / 255 - 0.5) / 0.5, splits.train.labels, splits.test.labels
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=splits.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train_x) / 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    pad, size = splits.input_size // 8, splits.input_size
    generator, start, accuracy = torch.Generator().manual_seed(seed), time.time(), {}
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_x), generator=generator)
        for first in range(0, len(order), 64):
            batch = order[first:first + 64]
            padded = F.pad(train_x[batch], (pad,) * 4)
            across = torch.randint(0, 2 * pad + 1, (len(batch),), generator=generator).tolist()
            down = torch.randint(0, 2 * pad + 1, (len(batch),), generator=generator).tolist()
            images = torch.stack([p[:, y:y + size, x:x + size] for p, y, x in zip(padded, down, across)])
            loss = F.cross_entropy(model(images).logits, train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch % 5 == 0 or epoch > epochs - 4:  # every fifth and the last four
            model.eval()
            with torch.no_grad():
                correct = sum(int((model(test_x[i:i + 500]).logits.argmax(1) == test_y[i:i + 500]).sum())
                              for i in range(0, len(test_x), 500))
            model.train()
            accuracy[epoch] = round(100 * correct / len(test_x), 2)
    return {"model": model_name, "epochs": epochs, "seed": seed, "threads": threads, "options": typed, "test_top1": accuracy,
            "last_loss": round(loss.item(), 3), "seconds": round(time.time() - start)}


if __name__ == "__main__":
    name, epochs, *pairs = sys.argv[1:]
    print(json.dumps(main(name, int(epochs), dict(pair.split("=", 1) for pair in pairs))))
