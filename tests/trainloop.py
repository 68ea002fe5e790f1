"""A small torch training loop with randomness everywhere (python, torch, dropout), checkpointed: run it twice,
interrupted or not, and compare the final weights."""

from __future__ import annotations

import random
import sys
import time

import torch

from durabatch.loops.checkpointer import Checkpointer
from durabatch.loops.torch import TorchState


def main(run_dir: str, out: str, steps: int, every: int, sleep: float) -> None:
    random.seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.5)
    data_x = torch.randn(512, 8)
    data_y = data_x.sum(dim=1, keepdim=True)
    ckpt = Checkpointer(run_dir, state=TorchState(model, optimizer, scheduler), every_steps=every)
    for _ in ckpt.range(steps):
        idx = torch.tensor(random.sample(range(512), 32))
        loss = torch.nn.functional.mse_loss(model(data_x[idx]), data_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        ckpt.record(loss=loss.item())
        time.sleep(sleep)
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
