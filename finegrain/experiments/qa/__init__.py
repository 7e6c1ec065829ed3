"""The long-form QA experiment (Wu et al. 2023, section 4), one module each:

    task.py     examples (question, passages, gold answer), the fixed split, the checks before any model loads
    metrics.py  held-out evaluation: RM-judged error rates, completeness, win rate; ROUGE-L, repetition,
                passage support, length (`finegrain eval --task qa`)
    report.py   the table over policies and the plots (`finegrain report --task qa`)
    demo.py     `finegrain demo qa`: every stage of configs/qa/ in order, resumable
"""
