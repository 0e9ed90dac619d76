"""Evaluation: benchmark tasks (`tasks`), the side-by-side harness (`harness`), one invocation of
it (`runner`), the outside decoders it compares with (`peers`), the summary and plots (`report`),
the speedup model fitted on its records (`fit`) and the benchmark report (`bench`). Answer
checking is `lookahead.answers`; the commands are `lookahead.cli.eval` and `lookahead.cli.bench`.
Nothing here imports from `lookahead.cli`.

Example:
    lookahead eval --task gsm8k --limit 20 --modes 'ar,lr,lr[gamma=4]'
"""
