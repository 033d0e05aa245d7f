"""``python -m covid.fit_ood``: fits a model's out-of-distribution statistics.

See :mod:`covid.evaluation.ood_fit` for the options. Run it after
``python -m covid.evaluate``, on the model as it is shipped.
"""

import sys

from covid.evaluation.ood_fit import main

if __name__ == "__main__":
    sys.exit(main())
