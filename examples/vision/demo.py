"""The vision demo as a script: python examples/vision/demo.py [folder] (same as `sftune demo --vision`).

A tiny random LLaVA-style model, built from a config with the embedded SmolLM2 tokenizer, learns the
colour and shape of figures drawn with Pillow; held-out accuracy before and after is printed.
"""

import sys
from pathlib import Path

from sftune.vision import demo

if __name__ == "__main__":
    demo.run(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo-vision"))
