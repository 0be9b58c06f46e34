"""The demo's "where a split wins" analysis: the planner over bandwidth and device speed."""

from __future__ import annotations

import pytest

from splitinfer.core.profiles import CodecCost, CutCost, DeviceProfile, EdgeProfile
from splitinfer.tools.demo_report import (
    WINDOW_DEVICE,
    _why_line,
    _window_lines,
    smallest_split,
    split_window,
)

pytestmark = pytest.mark.unit


def _profiles(split_bytes: int, jpeg_bytes: int = 14_000) -> tuple[DeviceProfile, EdgeProfile]:
    """Edge-only sends a JPEG; cut 1 costs the device 10 ms and sends ``split_bytes``; the
    whole model takes the device 100 ms and the edge 6 ms."""
    def cut(i: int, head_s: float, codecs: tuple[CodecCost, ...]) -> CutCost:
        return CutCost(cut_id=i, name=f"c{i}", head_s=head_s, head_flops=i, head_memory_bytes=0,
                       head_nodes=i, codecs=codecs)

    device = DeviceProfile(model="m", fingerprint="f", threads=1, response_bytes=4000, cuts=(
        cut(0, 0.0, (CodecCost("jpeg", jpeg_bytes, 0.004, 0.002),)),
        cut(1, 0.010, (CodecCost("int8+zstd", split_bytes, 0.001, 0.001),)),
        cut(2, 0.100, ())))
    edge = EdgeProfile(model="m", fingerprint="f", tail_s={0: 0.006, 1: 0.005, 2: 0.0})
    return device, edge


def test_a_split_smaller_than_the_jpeg_wins_on_thin_links_only():
    device, edge = _profiles(split_bytes=2_000)
    rows = split_window(device, edge, rtt_s=0.04)
    assert [r["device_factor"] for r in rows] == list(WINDOW_DEVICE)
    by = {r["device_factor"]: r for r in rows}
    # 12 KB less to send pays for the 10 ms head on thin links; on the thinnest the 4 KB answer
    # makes device-only (100 ms) the better baseline, on fat ones the JPEG is sent in no time
    mine = by[1.0]["wins_mbit"]
    assert mine == [m for m in mine if 1 < m < 20] and len(mine) >= 4
    assert by[1.0]["best"]["cut_id"] == 1 and by[1.0]["best"]["margin"] > 1
    # a device 4x faster runs the whole model in 25 ms: no split wins anywhere
    assert by[0.25]["wins_mbit"] == [] and by[0.25]["best"] is None
    # a device 2x slower: device-only is out of the race, the split wins on thinner links
    assert min(by[2.0]["wins_mbit"]) < min(mine)
    assert by[2.0]["best"]["baseline"] == "edge-only jpeg"
    text = "\n".join(_window_lines(rows, 0.04))
    assert f"this device: {min(mine):g}-{max(mine):g} Mbit/s" in text
    assert "a device 2x slower: " in text and "a device 4x faster: no bandwidth" in text


def test_a_split_bigger_than_the_jpeg_never_wins():
    device, edge = _profiles(split_bytes=27_000)
    rows = split_window(device, edge, rtt_s=0.04)
    assert all(not r["wins_mbit"] and r["best"] is None for r in rows)
    assert "no bandwidth from 0.25 to 512 Mbit/s" in "\n".join(_window_lines(rows, 0.04))


def test_why_names_the_smallest_split_and_the_jpeg():
    device, _ = _profiles(split_bytes=27_000)
    why = smallest_split(device)
    assert why is not None
    assert (why["cut_id"], why["codec"], why["request_bytes"]) == (1, "int8+zstd", 27_000)
    assert why["edge_only_bytes"] == 14_000 and why["head_ms"] == pytest.approx(10)
    assert "no link makes a split faster" in _why_line(why)
    small = smallest_split(_profiles(split_bytes=2_000)[0])
    assert small is not None and "no link" not in _why_line(small)
    # 12 KB saved at 20 Mbit/s: 4.8 ms, against the head's 10 ms
    assert "12.0 KB saved are worth 4.8 ms at 20.0 Mbit/s, against 10.0 ms" \
        in _why_line(small, 20e6)
