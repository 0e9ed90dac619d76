"""Evaluation: benchmark tasks (`tasks`), answer checking (`answers`), the side-by-side harness
(`harness`), its report (`report`) and the ``lookahead eval`` command (`cli`).

Example:
    lookahead eval --task gsm8k --limit 20 --modes 'ar,lr,lr[gamma=4]'
"""
