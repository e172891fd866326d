"""``python -m pyflows``: the command line, where the ``pyflows`` script is not on PATH."""

from .cli import main

main()
