"""``python -m vclip`` — the same as the ``vclip`` command (for machines where vclip is on PYTHONPATH
but not installed, such as a lent GPU box without a package index)."""

from vclip.cli import main

raise SystemExit(main())
