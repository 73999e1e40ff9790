"""``python -m nlss_fenicsx`` is the ``nlss-fenicsx`` command."""

from nlss_fenicsx.cli import main

if __name__ == "__main__":  # importing this module (e.g. pytest's doctest collection) runs nothing
    raise SystemExit(main())
