"""``python -m xcross_registry``: the ``xreg`` command, for launchers that start a module
(``accelerate launch -m xcross_registry ...``, ``torchrun -m xcross_registry ...``)."""

from .cli import main

if __name__ == "__main__":
    main()
