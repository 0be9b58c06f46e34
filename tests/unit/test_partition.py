"""Partitioner on small models: cut structure, exactness, dynamic batch, errors, fingerprint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import splitinfer
from splitinfer import PartitionError
from tests.models import Chain, DataDependent, SkipNet, Transposed, TwoInTwoOut


def _flat(out):
    if isinstance(out, dict):
        return tuple(out[k] for k in sorted(out))
    return out if isinstance(out, tuple) else (out,)


def _assert_exact_everywhere(sm, model, inputs):
    with torch.no_grad():
        ref = _flat(model(*inputs))
    for cut in sm.cuts:
        crossing = sm.head(cut.id)(*inputs)
        assert len(crossing) == len(cut.tensors), cut
        for t, spec in zip(crossing, cut.tensors):
            assert spec.matches(tuple(t.shape), str(t.dtype).replace("torch.", "")), (cut, spec)
        out = _flat(sm.tail(cut.id)(*crossing))
        assert len(out) == len(ref)
        for a, b in zip(out, ref):
            assert torch.equal(a, b), f"cut {cut.id} ({cut.name}) is not exact"


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_chain_exact_at_every_cut_for_any_batch(batch):
    torch.manual_seed(0)
    model = Chain().eval()
    sm = splitinfer.partition(model, (torch.randn(1, 16),))
    assert sm.capture == "export"
    _assert_exact_everywhere(sm, model, (torch.randn(batch, 16),))


def test_cut_list_shape():
    torch.manual_seed(0)
    sm = splitinfer.partition(Chain().eval(), (torch.randn(3, 16),))
    names = [c.name for c in sm.cuts]
    assert names == ["input", "fc1", "act", "output"]
    assert [c.id for c in sm.cuts] == list(range(len(sm.cuts)))
    # cut 0 carries the model inputs, the last cut the outputs; batch dim is dynamic
    assert [(t.shape, t.dtype) for t in sm.cuts[0].tensors] == [((-1, 16), "float32")]
    assert [(t.shape, t.dtype) for t in sm.cuts[-1].tensors] == [((-1, 8), "float32")]
    assert sm.cuts[0].head_flops_fraction == 0.0
    assert sm.cuts[-1].head_flops_fraction == pytest.approx(1.0)
    fractions = [c.head_flops_fraction for c in sm.cuts]
    assert fractions == sorted(fractions)


def test_skip_connections_and_branches_cross_as_several_tensors():
    torch.manual_seed(0)
    model = SkipNet().eval()
    sm = splitinfer.partition(model, (torch.randn(1, 3, 16, 16),))
    assert max(len(c.tensors) for c in sm.cuts) >= 2  # inside the residual block
    _assert_exact_everywhere(sm, model, (torch.randn(4, 3, 16, 16),))


@pytest.mark.parametrize("capture", ["export", "fx"])
@pytest.mark.parametrize("batch", [1, 3])
def test_tail_takes_contiguous_copies_of_transposed_tensors(capture, batch):
    torch.manual_seed(0)
    model = Transposed().eval()
    sm = splitinfer.partition(model, (torch.randn(1, 6, 8),), capture=capture)
    assert sm.capture == capture
    x = torch.randn(batch, 6, 8)
    with torch.no_grad():
        ref = model(x)
    strided = 0
    for cut in sm.cuts:
        crossing = sm.head(cut.id)(x)
        strided += any(not t.is_contiguous() for t in crossing)
        # as off the wire (decoded tensors are contiguous), and as the head made them
        for given in ([t.contiguous() for t in crossing], crossing):
            out = sm.tail(cut.id)(*given)
            assert torch.equal(out, ref), f"cut {cut.id} ({cut.name}) is not exact"
        # any other layout a caller hands in works too
        odd = [t.transpose(0, -1).contiguous().transpose(0, -1) for t in crossing]
        assert torch.equal(sm.tail(cut.id)(*odd), ref), f"cut {cut.id} ({cut.name})"
    assert strided >= 3  # the model does make transposed, selected and expanded tensors cross


def test_parameters_and_buffers_never_cross():
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    x, mask = torch.randn(2, 10, 4), torch.ones(2, 10, dtype=torch.int64)
    sm = splitinfer.partition(model, (x, mask))
    for cut in sm.cuts:
        for spec in cut.tensors:
            # every crossing tensor carries the batch dim: it depends on the inputs, not weights
            assert spec.shape[0] == -1, (cut.name, spec)
    mask = torch.ones(3, 10, dtype=torch.int64)
    mask[1, 4:] = 0
    _assert_exact_everywhere(sm, model, (torch.randn(3, 10, 4), mask))


def test_multiple_inputs_and_dict_outputs_are_named():
    torch.manual_seed(0)
    sm = splitinfer.partition(TwoInTwoOut().eval(),
                              (torch.randn(1, 6, 4), torch.ones(1, 6, dtype=torch.int64)))
    assert [s.name for s in sm.input_specs] == ["x", "mask"]
    assert [s.dtype for s in sm.input_specs] == ["float32", "int64"]
    assert [s.name for s in sm.output_specs] == ["hidden", "logits"]
    assert sm.cuts[0].tensors[1].dtype == "int64"


def test_input_names_override_the_forward_signature():
    """input_names names the bundle's inputs (and the head's arguments) whatever forward calls
    them; a model taking *args gets them too."""
    torch.manual_seed(0)
    x = (torch.randn(1, 6, 4), torch.ones(1, 6, dtype=torch.int64))
    model = TwoInTwoOut().eval()
    sm = splitinfer.partition(model, x, input_names=["tokens_f", "attn"])
    assert [s.name for s in sm.input_specs] == ["tokens_f", "attn"]
    assert [s.name for s in sm.output_specs] == ["hidden", "logits"]
    with torch.no_grad():
        want = model(*x)["logits"]
        assert torch.equal(sm(*x)[1], want)  # outputs flattened: hidden, logits

    class Star(nn.Module):
        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return xs[0] * 2

    assert [s.name for s in splitinfer.partition(Star(), torch.ones(1, 3)).input_specs] \
        == ["input0"]
    assert [s.name for s in splitinfer.partition(Star(), torch.ones(1, 3),
                                                 input_names=["frame"]).input_specs] == ["frame"]


@pytest.mark.parametrize("names", [["a b", "m"], ["x", "x"], ["x"], ["x", "class"],
                                   ["self", "m"], ["x", 3]])
def test_bad_input_names_are_refused_by_name(names):
    x = (torch.randn(1, 6, 4), torch.ones(1, 6, dtype=torch.int64))
    with pytest.raises(PartitionError, match="input_names .*expected 2 distinct Python "
                                             "identifiers"):
        splitinfer.partition(TwoInTwoOut().eval(), x, input_names=names)


def test_fingerprint_identical_for_identical_models_and_changes_with_weights():
    x = (torch.randn(1, 16),)
    a = splitinfer.partition(Chain.__new__(Chain).__class__().eval(), x)  # different init
    torch.manual_seed(0)
    m1 = Chain().eval()
    torch.manual_seed(0)
    m2 = Chain().eval()
    f1 = splitinfer.partition(m1, x).fingerprint
    assert f1 == splitinfer.partition(m2, x).fingerprint
    assert len(f1) == 64 and a.fingerprint != f1
    with torch.no_grad():
        m2.fc2.bias[0] += 1e-6
    assert splitinfer.partition(m2, x).fingerprint != f1


def test_uncapturable_model_gets_partition_error_naming_the_problem():
    with pytest.raises(PartitionError) as err:
        splitinfer.partition(DataDependent().eval(), (torch.randn(1, 4),))
    msg = str(err.value)
    assert "torch.export failed" in msg and "torch.fx failed" in msg
    assert "data-dependent" in msg.lower() or "guard" in msg.lower()
    assert "Way out" in msg
    assert "y.sum() > 0" in msg  # points at the model's own failing line


def test_export_only_capture_reports_the_export_error():
    with pytest.raises(PartitionError, match="torch.export could not capture"):
        splitinfer.partition(DataDependent().eval(), (torch.randn(1, 4),), capture="export")


@torch.library.custom_op("splitinfer_test::opaque_scale", mutates_args=())
def _opaque_scale(x: torch.Tensor) -> torch.Tensor:  # no fake impl: export cannot trace it
    return x * 3.0


class _Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.ops.splitinfer_test.opaque_scale(self.fc(x)))


def test_falls_back_to_fx_and_says_so():
    torch.manual_seed(0)
    model = _Opaque().eval()
    sm = splitinfer.partition(model, (torch.randn(1, 4),))
    assert sm.capture == "fx"
    assert sm.export_error
    _assert_exact_everywhere(sm, model, (torch.randn(3, 4),))


@pytest.mark.parametrize("bad, match", [
    ((), "non-empty tuple of tensors"),
    (([1.0, 2.0],), "non-empty tuple of tensors"),
    ((torch.tensor(1.0),), "no batch dimension"),
])
def test_bad_example_inputs(bad, match):
    with pytest.raises(PartitionError, match=match):
        splitinfer.partition(Chain().eval(), bad)


def test_bad_cut_ids_and_arity():
    sm = splitinfer.partition(Chain().eval(), (torch.randn(1, 16),))
    with pytest.raises(PartitionError, match="out of range"):
        sm.head(99)
    with pytest.raises(PartitionError, match="no cut named"):
        sm.cut("nope")
    with pytest.raises(PartitionError, match="takes 1 tensor"):
        sm.tail(1)(torch.randn(1, 32), torch.randn(1, 32))
    assert sm.cut("act").id == 2
    with pytest.raises(PartitionError, match="max_cut_tensors"):
        splitinfer.partition(Chain().eval(), (torch.randn(1, 16),), max_cut_tensors=0)


def test_max_cut_tensors_filters_cuts():
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 16, 16),)
    wide = splitinfer.partition(SkipNet().eval(), x, max_cut_tensors=4)
    narrow = splitinfer.partition(SkipNet().eval(), x, max_cut_tensors=1)
    assert all(len(c.tensors) == 1 for c in narrow.cuts)
    assert len(narrow.cuts) < len(wide.cuts)


def test_training_mode_is_restored():
    model = Chain().train()
    splitinfer.partition(model, (torch.randn(1, 16),))
    assert model.training


def test_partition_is_the_function_wherever_it_is_reached():
    import importlib

    module = importlib.import_module("splitinfer.model.split_model")  # its layer's module
    assert splitinfer.partition is module.partition  # the package re-exports the function
    sm = splitinfer.partition(Chain().eval(), (torch.randn(1, 16),))
    assert isinstance(sm, splitinfer.SplitModel) and isinstance(sm, module.SplitModel)


def test_exported_tails_never_write_their_inputs_and_in_place_graphs_are_told():
    sm = splitinfer.partition(Chain().eval(), (torch.randn(2, 16),))
    assert not any(sm.tail(c.id).writes_inputs for c in sm.cuts)  # torch.export: functional

    class InPlace(nn.Module):
        def forward(self, x):
            return x.relu_() * 2

    gm = torch.fx.symbolic_trace(InPlace())
    from splitinfer.model.split_model import _Segment

    assert _Segment(gm, 1, "tail", unwrap=True).writes_inputs
    relu = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(inplace=True)))
    assert _Segment(relu, 1, "tail", unwrap=True).writes_inputs
    plain = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU()))
    assert not _Segment(plain, 1, "tail", unwrap=True).writes_inputs
