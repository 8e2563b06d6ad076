"""``python -m fuzzer``."""

import sys

from fuzzer._cli import main

sys.exit(main())
