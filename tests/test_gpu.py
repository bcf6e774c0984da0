import pytest

from daemon.inference.gpu import gpu_stats, visible_indices


def test_no_gpu_means_no_stats_and_no_error() -> None:
    # This machine has no NVIDIA driver: the optional GPU metrics must simply be absent.
    assert gpu_stats() == []


@pytest.mark.parametrize(
    "env, count, expected",
    [
        (None, 2, [0, 1]),
        ("1", 2, [1]),
        ("0,1,7", 2, [0, 1]),
        ("GPU-uuid", 2, []),
        ("", 3, [0, 1, 2]),
    ],
)
def test_visible_indices(monkeypatch: pytest.MonkeyPatch, env, count, expected) -> None:
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_indices(count) == expected
