"""Allow ``python -m wavedistill``."""

from wavedistill.cli import main

raise SystemExit(main())
