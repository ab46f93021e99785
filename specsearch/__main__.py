import sys

from specsearch.cli import main

sys.exit(main())
