import sys

from diet.cli import main

sys.exit(main())
