"""Train a MaxToki model with Composer from a YAML recipe.

    composer scripts/train.py configs/pretrain/tiny-cpu.yaml [key=value ...]
    composer scripts/train.py -f configs/temporal/217m.yaml variables.data=s3://bucket/paragraphs ...

Any recipe key can be overridden as ``key=value`` (dotted for nested keys).
"""

import sys

from maxtoki.training import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
