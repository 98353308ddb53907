"""`python -m plangate`: the same as the `plangate` command."""
import sys

from plangate.cli import main

sys.exit(main())
