"""Bridges to EasyEdit: its experiment pipeline run in-process (`pipeline`) and registration into
an EasyEdit checkout's registries (`easyedit`).

Nothing here is imported by the rest of the package; EasyEdit itself stays an optional dependency.
"""
