import sys

from infra.admin.cli import main

sys.exit(main())
