"""Entry point of the MEET Studio Gradio app: NOT BUILT YET (issue 4).

Until the app lands this file says so and exits, instead of pretending. What works today:

    python -m meet.data.shapes --out data/shapes
    python -m meet.evaluate --checkpoint assets/shapes-demo --data data/shapes --split test
"""

import sys

if __name__ == "__main__":
    print("MEET Studio's app is not built yet (issue 4). The package works: see README.md, "
          "e.g. `python -m meet.evaluate --checkpoint assets/shapes-demo --data data/shapes "
          "--split test`.", file=sys.stderr)
    sys.exit(2)
