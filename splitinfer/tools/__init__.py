"""Tools and apps: the ``splitinfer`` CLI, the demos, the link emulator, the CPU quota and the one
edge-node launcher.

The top layer: these may import every other part (the library, ``edge_node``'s command line,
``device_client``), and nothing imports them (an import-linter contract checks it).
"""
