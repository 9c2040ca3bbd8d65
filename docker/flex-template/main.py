"""The Flex Template's program: run the stored job named by the template parameters on Dataflow."""

import sys

from hyperbatch.runners.flex import flex_main

if __name__ == "__main__":
    sys.exit(flex_main(sys.argv[1:]))
