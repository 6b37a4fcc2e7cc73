"""``python -m stepfsm``: the same as the ``stepfsm`` command (see :mod:`stepfsm.cli`)."""

from stepfsm.cli import main

if __name__ == "__main__":  # pragma: no branch - imported only by `python -m stepfsm`
    raise SystemExit(main())
