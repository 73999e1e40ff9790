"""``python -m nlss_fenicsx`` is the ``nlss-fenicsx`` command."""

from nlss_fenicsx.cli import main

raise SystemExit(main())
