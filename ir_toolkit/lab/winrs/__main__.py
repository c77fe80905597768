import sys

from ir_toolkit.lab.winrs.server import main

sys.exit(main())
