"""Write and read a model bundle: the exported program, example inputs and a manifest.

See :mod:`splitinfer.model.manifest` for the layout. ``save_bundle`` writes a bundle atomically;
``load_bundle`` rebuilds the :class:`~splitinfer.model.split_model.SplitModel` without the
model's Python class and refuses a bundle whose files are missing, truncated, altered, or whose
program does not match the manifest (fingerprint, cuts, or an image bundle's normalization).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from splitinfer.core.errors import BundleError

from .manifest import (
    EXAMPLES,
    MANIFEST,
    PROGRAM,
    Manifest,
    check_name,
    read_manifest,
    sha256_file,
    verify_files,
)

if TYPE_CHECKING:  # torch and the model code load lazily: reading a manifest needs neither
    from torch import nn

    from .image_input import ImageInput
    from .split_model import SplitModel

__all__ = ["save_bundle", "load_bundle", "export_bundle", "Manifest", "read_manifest"]


def save_bundle(sm: SplitModel, directory: str | os.PathLike[str], *, name: str | None = None,
                version: str = "1", overwrite: bool = False) -> Manifest:
    """Write ``sm`` (a SplitModel captured with torch.export) as a bundle in ``directory``.

    The bundle is written to a temporary directory next to it and renamed into place, so a
    crash never leaves a half-written bundle under the final name.
    """
    import torch

    from .capture import serialize_program

    if sm.program is None:
        raise BundleError(f"model {sm.name!r} was captured with torch.fx (torch.export failed: "
                          f"{sm.export_error}); bundles need a torch.export capture. Make the "
                          "model exportable, then export again.")
    name = check_name("model name", name or sm.name)
    version = check_name("model version", str(version))
    target = Path(directory)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise BundleError(f"{target} exists and is not empty; choose another directory or "
                          "pass overwrite=True (--force)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        (tmp / PROGRAM).write_bytes(serialize_program(sm.program))
        buf = io.BytesIO()
        torch.save([t.detach().cpu() for t in sm.example_inputs], buf)
        (tmp / EXAMPLES).write_bytes(buf.getvalue())
        files = {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size}
                 for f in (PROGRAM, EXAMPLES)}
        manifest = Manifest(name=name, version=version, fingerprint=sm.fingerprint,
                            capture=sm.capture, inputs=tuple(sm.input_specs),
                            outputs=tuple(sm.output_specs), cuts=tuple(sm.cuts), files=files,
                            max_cut_tensors=sm.max_cut_tensors,
                            torch_version=torch.__version__, image_input=sm.image_input)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def load_bundle(directory: str | os.PathLike[str]) -> SplitModel:
    """Rebuild the SplitModel stored in ``directory``; refuses anything that does not check out."""
    import torch

    from .capture import Captured, deserialize_program
    from .split_model import SplitModel

    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    try:
        program = deserialize_program((directory / PROGRAM).read_bytes())
    except Exception as exc:  # torch raises zip, JSON and serde errors alike
        raise BundleError(f"{directory / PROGRAM}: cannot be loaded ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); re-export the bundle") from exc
    try:
        examples = torch.load(io.BytesIO((directory / EXAMPLES).read_bytes()),
                              weights_only=True)
        if not isinstance(examples, list) or not all(isinstance(t, torch.Tensor)
                                                     for t in examples):
            raise TypeError(f"expected a list of tensors, got {type(examples).__name__}")
    except Exception as exc:
        raise BundleError(f"{directory / EXAMPLES}: cannot be loaded ({exc})") from exc
    captured = Captured("export", program.graph_module, program,
                        [s.name for s in manifest.outputs])
    if manifest.image_input is not None:
        _check_image_program(directory, program, manifest.image_input)
    try:
        sm = SplitModel(captured, examples, name=manifest.name,
                        max_cut_tensors=manifest.max_cut_tensors,
                        cut_names=[c.name for c in manifest.cuts],
                        image_input=manifest.image_input)
    except Exception as exc:
        raise BundleError(f"{directory}: the program does not match its manifest "
                          f"({type(exc).__name__}: {exc})") from exc
    if sm.fingerprint != manifest.fingerprint:
        raise BundleError(f"{directory}: manifest fingerprint {manifest.fingerprint[:16]}… "
                          f"does not match the program's {sm.fingerprint[:16]}…; the program "
                          "was replaced or the manifest belongs to another model")
    for mine, theirs in zip(sm.cuts, manifest.cuts):
        if mine.tensors != theirs.tensors:
            raise BundleError(f"{directory}: cut {theirs.id} ({theirs.name}) in the manifest "
                              f"crosses {[t.name for t in theirs.tensors]}, the program "
                              f"{[t.name for t in mine.tensors]}; re-export the bundle")
    if len(sm.cuts) != len(manifest.cuts) or sm.input_specs != manifest.inputs or \
            sm.output_specs != manifest.outputs:
        raise BundleError(f"{directory}: the program's cuts or input/output specs differ "
                          "from the manifest; re-export the bundle")
    sm.version = manifest.version
    sm.manifest = manifest
    return sm


def _check_image_program(directory: Path, program: Any, image: ImageInput) -> None:
    """The program normalizes frames as the manifest's image_input says (mean, std, scale)."""
    import torch

    from .capture import WRAPPED

    state = program.state_dict
    want = {"mean": image.mean, "std": image.std}
    for key, values in want.items():
        buf = state.get(f"{WRAPPED}.{key}")
        if not isinstance(buf, torch.Tensor) or \
                not torch.equal(buf.reshape(-1).cpu(), torch.tensor(values, dtype=buf.dtype)):
            raise BundleError(f"{directory}: the manifest's image_input {key} {values} is not "
                              "what the program normalizes with; the manifest was edited or "
                              "belongs to another bundle: re-export the bundle")
    divisors = [n.args[1] for n in program.graph.nodes if n.op == "call_function"
                and str(n.target) == "aten.div.Tensor" and isinstance(n.args[1], float)]
    if not divisors or abs(divisors[0] * image.scale - 1) > 1e-9:
        raise BundleError(f"{directory}: the manifest's image_input scale {image.scale:g} is "
                          "not what the program scales frames with; re-export the bundle")


def export_bundle(model: nn.Module, example_inputs: Sequence[Any], directory: str | os.PathLike[str],
                  *, name: str | None = None, version: str = "1", overwrite: bool = False,
                  **partition_kwargs: Any) -> Manifest:
    """Partition ``model`` and write it as a bundle in one step."""
    from .split_model import partition

    sm = partition(model, example_inputs, name=name, capture="export", **partition_kwargs)
    return save_bundle(sm, directory, name=name, version=version, overwrite=overwrite)
