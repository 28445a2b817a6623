"""`python -m stream.cli`: the `intentstream` console script."""
import sys

from stream.cli import main

sys.exit(main())
