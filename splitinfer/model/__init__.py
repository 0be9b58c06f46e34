"""The model layer: capture a PyTorch model, find its cuts, build heads and tails, bundles, ONNX.

torch lives here and above. ``manifest`` alone is torch-free (a device without torch reads a
bundle's manifest with it); every other module imports torch, so this package's ``__init__``
imports nothing: ``import splitinfer.model.manifest`` stays cheap.
"""
