"""guestpull: the Confidential Containers guest image pull, for local registries.

Host side: build, lint, digest and encode Init-Data.  Guest side: pull an image exactly as
``cdh.toml [image]`` says, verify every digest, unpack safely and produce an OCI bundle.
"""

__version__ = "0.1.0"
