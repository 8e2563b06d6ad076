"""``python -m fuzzer``."""

import sys

try:
    from fuzzer._cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: as at any other moment
    sys.stderr.write("interrupted\n")
    sys.exit(2)

sys.exit(main())
