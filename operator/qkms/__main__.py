import sys

from qkms.cli import main

sys.exit(main())
