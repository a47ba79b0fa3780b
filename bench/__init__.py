"""The guestpull benchmark: guestpull against skopeo+umoci and containerd on a local registry.

Run it with ``.venv/bin/python -m bench`` from the repository root (``--help`` for options).
See ``bench/README.md``.
"""
