import sys

from ssnet_broker.cli import main

sys.exit(main())
