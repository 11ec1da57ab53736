"""The helpers without a process group: sharding, the final coverage check,
the torchrun environment, lone-process fallbacks."""

from __future__ import annotations

import pytest

from sae1n import distributed as dist
from sae1n.errors import ConfigError, Sae1nError

from .conftest import run_ranks


def test_shard_is_deterministic_disjoint_and_complete():
    ids = [f"slide_{i:03d}" for i in range(23)][::-1]
    for world in (1, 2, 3, 8, 40):
        shares = [dist.shard(ids, r, world) for r in range(world)]
        flat = [s for share in shares for s in share]
        assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        # the input order does not matter; the same call gives the same share
        assert shares == [dist.shard(sorted(ids), r, world) for r in range(world)]
    assert dist.shard(ids) == sorted(ids)  # a lone process takes everything
    with pytest.raises(ConfigError, match="rank"):
        dist.shard(ids, 2, 2)


def test_final_check_names_missing_and_duplicate_slides(tmp_path):
    dist.check_every_slide_done(["a", "b", "c"], [["a", "c"], ["b"]], what="x", where=tmp_path)
    with pytest.raises(Sae1nError, match=r"1 slide\(s\) not done: c.*Re-run"):
        dist.check_every_slide_done(["a", "b", "c"], [["a"], ["b"]], what="x", where=tmp_path)
    with pytest.raises(Sae1nError, match=r"done by several ranks: b"):
        dist.check_every_slide_done(["a", "b"], [["a", "b"], ["b"]], what="x", where=tmp_path)


def test_torchrun_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert not dist.launched() and dist.env_info() == dist.DistInfo()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT not set.*torchrun"):
        dist.env_info()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    me = dist.env_info()
    assert (me.rank, me.world_size, me.local_rank, me.local_world_size) == (3, 4, 1, 2)
    assert dist.launched() and not me.is_main
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK='x' is not an integer"):
        dist.env_info()


def test_lone_process_needs_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with dist.session() as me:
        assert not dist.is_initialized()
        assert me == dist.DistInfo() and dist.is_main() and dist.world_size() == 1
        assert dist.all_gather_objects({"a": 1}) == [{"a": 1}]
        assert dist.broadcast_object(5) == 5
        assert dist.in_turn(lambda: 7) == 7
        assert dist.rank_device("cuda") == "cuda"
        dist.barrier()


def _failing_setup_and_drift(rank):
    import torch

    from sae1n.sae.distributed import resync_if_drifted

    def build():
        if rank == 0:
            raise OSError("disk full")
        return "store"

    try:
        dist.in_turn(build, what="packing the feature store")
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    layer = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(layer.weight, float(rank))  # the ranks disagree
    drifted = resync_if_drifted(layer)
    return error, drifted, layer.weight.sum().item(), resync_if_drifted(layer)


def test_an_error_on_one_rank_stops_all_with_its_message(tmp_path):
    (e0, d0, w0, again0), (e1, d1, w1, again1) = run_ranks(tmp_path, _failing_setup_and_drift)
    assert e0 == "OSError: disk full"
    assert e1 == "Sae1nError: packing the feature store failed on rank 0: OSError: disk full"
    # weights that differ between ranks are noticed and replaced by rank 0's
    assert d0 and d1 and w0 == w1 == 0.0 and not again0 and not again1
