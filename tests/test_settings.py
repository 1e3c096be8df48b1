"""Settings: worker count and per-worker thread budgets resolve from the cores, bad values are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import MAX_AUTO_WORKERS, Settings, cpu_cores

CPU = ["CPUExecutionProvider"]


def test_auto_workers_take_the_cores_and_split_the_threads():
    s = Settings(workers=0, providers=CPU)
    workers = s.worker_count()
    assert workers == min(cpu_cores(), MAX_AUTO_WORKERS)
    resolved = Settings(workers=workers, providers=CPU)  # what `nftlens serve` hands each worker
    assert resolved.per_worker(0) == max(1, cpu_cores() // workers)
    assert workers * resolved.per_worker(0) <= max(cpu_cores(), workers)
    assert resolved.per_worker(3) == 3  # an explicit budget is kept
    assert s.per_worker(0) == cpu_cores()  # unresolved (create_app under another server): one process


def test_explicit_workers_are_kept():
    assert Settings(workers=3, providers=CPU).worker_count() == 3
    assert Settings(workers=64, providers=CPU).per_worker(0) == 1


@pytest.mark.parametrize(
    "field,value",
    [
        ("workers", -1),
        ("workers", 65),
        ("intra_op_threads", -1),
        ("preprocess_threads", -2),
        ("blas_threads", 0),
    ],
)
def test_bad_values_are_refused(field, value):
    with pytest.raises(ValidationError):
        Settings(**{field: value})
