"""``python -m residual`` and the ``residual`` command (pyproject's console script points here);
the tool itself is :mod:`residual.cli`."""

import sys


def main(argv=None):
    """Run the command-line tool; return its exit status (see :func:`residual.cli.main`)."""
    from residual.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
