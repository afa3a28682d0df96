import sys

from mvxray.cli import main

sys.exit(main())
