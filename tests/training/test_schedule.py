"""The training schedule and its time budget (torch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_fit_epochs_fits_the_budget_and_never_exceeds_the_maximum() -> None:
    from daemon.training.train import fit_epochs

    # one epoch of 20 s (warm-up included) spent of 400 s at 7 s an epoch: 1 + 54 more
    assert fit_epochs(200, 1, elapsed_s=20.0, epoch_s=7.0, budget_s=400.0) == 55
    assert fit_epochs(30, 1, elapsed_s=20.0, epoch_s=7.0, budget_s=400.0) == 30
    # over budget already: stop where it is, never below the epochs done
    assert fit_epochs(200, 3, elapsed_s=500.0, epoch_s=7.0, budget_s=400.0) == 3
    assert fit_epochs(18, 1, elapsed_s=20.0, epoch_s=7.0, budget_s=0.0) == 18


def test_shortened_schedule_anneals_by_its_new_end_and_resumes_with_it() -> None:
    from daemon.training.train import _schedule

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = _schedule(optimizer, steps=1000)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    scheduler.lr_lambdas[0].steps = 100  # a time budget cut the run to a tenth
    for _ in range(90):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.01)  # the cosine's floor, on time
    state = scheduler.state_dict()
    again = _schedule(torch.optim.AdamW(model.parameters(), lr=1.0), steps=1000)
    again.load_state_dict(state)
    assert again.lr_lambdas[0].steps == 100
