"""Image-text SFT on the same data path, templates, masks and trainer as text.

    models.py   is_vision_model(folder), load(folder) -> (model, processor)
    encode.py   one conversation -> input_ids, labels (images expanded by the processor, all masked)
    dataset.py  many conversations -> rows and an EncodeReport; the collator that adds pixels per batch
    methods.py  what trains in a vision-language model (vision tower frozen by default)
    tiny.py     tiny random models of each family, for tests and the demo
    demo.py     the synthetic colour-and-shape task
How it works: docs/vision.md.
"""
