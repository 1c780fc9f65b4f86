"""`python -m partitions.cli`: the hvsim command without its console script."""
import sys

from partitions.cli import main

sys.exit(main())
