"""The pure core: value types, errors, the link model, measured profiles and the planner.

Standard library and numpy only: no torch, no protobuf, no gRPC, no clocks, files or sockets
in the planner. Every other layer builds on these values; they cross every border (bundle
manifest, wire, device client, edge node) as frozen dataclasses with a JSON form.
"""
