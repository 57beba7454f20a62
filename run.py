#!/usr/bin/env python
"""xray kit: python run.py --stage all (see --help, or README.md)."""
import sys

from kit.cli import main

if __name__ == "__main__":
    sys.exit(main())
