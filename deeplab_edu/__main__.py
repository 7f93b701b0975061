"""``python -m deeplab_edu``: see :mod:`deeplab_edu.cli`."""

from deeplab_edu.cli import main

raise SystemExit(main())
