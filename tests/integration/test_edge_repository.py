"""The model repository over a node's life: bad bundles at start are fatal, later ones are not.

At start, a corrupt bundle or an empty repository stops the node with a StartupError that says
which bundle or directory. While serving (``rescan_interval_s``), new good bundles become
servable and bad ones are skipped without taking the node down; a bad one repaired in place is
picked up.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import grpc
import pytest
import torch

from edge_node.server import StartupError
from splitinfer.model.bundle import save_bundle
from splitinfer.wire import convert
from splitinfer.wire.v1 import model_pb2

from .conftest import SERVING, create_and_start, edge_config, make_request, outputs_of, wait_until

PROGRAM = "program.pt2"


def model_info(node, model: str, version: str = "") -> convert.ModelInfo | None:
    """The model's info, or None while the node does not serve that version."""
    try:
        return convert.parse_model_info(node.stub.GetModelInfo(
            model_pb2.ModelInfoRequest(model=model, version=version), timeout=10))
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
        return None


def drop_in(source: Path, dest: Path, *, truncate: bool = False) -> None:
    """Copy a bundle into the repository the safe way: stage under a dot name, then rename."""
    staging = dest.parent / f".incoming-{dest.name}"
    shutil.copytree(source, staging)
    if truncate:
        program = staging / PROGRAM
        program.write_bytes(program.read_bytes()[:1000])
    staging.rename(dest)


def infer_chain(node, bundles, version: str) -> None:
    x = torch.randn(1, 16)
    response = node.stub.Infer(make_request(bundles.chain, 0, [x], version=version), timeout=30)
    assert response.version == version
    with torch.no_grad():
        assert torch.equal(outputs_of(response)[0], bundles.chain_eager(x))


def test_new_bundles_are_served_and_bad_ones_skipped(nodes, bundles, tmp_path):
    repo = bundles.repo(tmp_path / "repo", ("chain", "1"), copy=True)
    more = tmp_path / "more"
    for version in ("3", "4"):
        save_bundle(bundles.chain, more / version, version=version)
    node = nodes(edge_config(repo, rescan_interval_s=0.2))

    drop_in(bundles.path("chain", "2"), repo / "chain" / "2")
    info = wait_until(lambda: model_info(node, "chain", "2"), what="chain v2 to be served")
    assert info.versions == ("1", "2")
    infer_chain(node, bundles, "2")

    # a truncated v3, then a good v4: the scan that finds v4 has seen (and skipped) v3
    drop_in(more / "3", repo / "chain" / "3", truncate=True)
    (repo / "garbage" / "1").mkdir(parents=True)
    (repo / "garbage" / "1" / "manifest.json").write_text("{not json")
    drop_in(more / "4", repo / "chain" / "4")
    wait_until(lambda: model_info(node, "chain", "4"), what="chain v4 to be served")
    assert model_info(node, "chain", "3") is None
    assert model_info(node, "garbage") is None
    assert model_info(node, "chain").versions == ("1", "2", "4")
    assert node.check() == SERVING and node.check("chain") == SERVING
    infer_chain(node, bundles, "1")
    infer_chain(node, bundles, "4")

    # repaired in place (same file names: the directory's mtime does not change)
    shutil.copyfile(more / "3" / PROGRAM, repo / "chain" / "3" / PROGRAM)
    wait_until(lambda: model_info(node, "chain", "3"), what="repaired chain v3 to be served")
    infer_chain(node, bundles, "3")


def start_error(loop, repo: Path) -> str:
    with pytest.raises(StartupError) as info:
        loop.run(create_and_start(edge_config(repo)))
    return str(info.value)


def test_corrupt_bundle_at_start_is_a_startup_error(loop, bundles, tmp_path):
    repo = bundles.repo(tmp_path / "repo", ("chain", "1"), ("chain", "2"), copy=True)
    program = repo / "chain" / "2" / PROGRAM
    program.write_bytes(program.read_bytes()[:1000])
    message = start_error(loop, repo)
    assert str(repo / "chain" / "2") in message
    assert "corrupt" in message or "truncated" in message


def test_misplaced_bundle_at_start_is_a_startup_error(loop, bundles, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(bundles.path("chain", "1"), repo / "chain" / "5")
    message = start_error(loop, repo)
    assert str(repo / "chain" / "5") in message and "<repo>/chain/1/" in message


def test_empty_repository_is_a_startup_error(loop, tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    message = start_error(loop, repo)
    assert str(repo) in message and "holds no bundles" in message
    missing = tmp_path / "missing"
    message = start_error(loop, missing)
    assert str(missing) in message and "not a directory" in message


def test_rescan_goes_on_after_the_repository_vanished_for_a_while(nodes, bundles, tmp_path,
                                                                   caplog):
    repo = bundles.repo(tmp_path / "repo", ("chain", "1"), copy=True)
    node = nodes(edge_config(repo, rescan_interval_s=0.05))
    aside = tmp_path / "aside"
    repo.rename(aside)  # as in a swap: mv repo repo.old && mv repo.new repo

    def failed_scan_logged() -> bool:
        return any(r.name == "edge_node.server" and r.levelno >= logging.WARNING and
                   str(repo) in r.getMessage() for r in caplog.records)

    wait_until(failed_scan_logged, what="the failed rescan to be logged")
    infer_chain(node, bundles, "1")  # what was loaded keeps serving
    aside.rename(repo)
    drop_in(bundles.path("chain", "2"), repo / "chain" / "2")
    wait_until(lambda: model_info(node, "chain", "2"), what="chain v2 to be served")
    assert node.check() == SERVING
