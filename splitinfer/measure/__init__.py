"""Measuring: the profiler (device and edge costs per cut and codec) and the emulated slow device.

Above the model, codec and wire layers: the profiler runs heads and tails, encodes real
crossing tensors and builds real messages, and fills the core's frozen profiles with what it
timed. Nothing here plans: that is :mod:`splitinfer.core.planner`'s job.
"""
