"""The detoxification experiment (Wu et al. 2023, section 3): holistic vs fine-grained PPO on
RealToxicityPrompts continuations, judged by toxicity, fluency and diversity.

    task.py        prompts, the held-out split, the two runs' settings, toxicity from a logged reward
    metrics.py     the toxicity table (expected max toxicity, toxic probability) and `evaluate_policy`
    demo.py        `finegrain demo detox` (demo_cli.py): evaluate, train both arms, evaluate, report
    report.py      report.md and curves.png comparing runs (`finegrain report`, report_cli.py)
"""
