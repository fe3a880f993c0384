"""The parts of ``tools/demo.py``, one concern per module.

- :mod:`.schedules`: the tasks, their configs and the stage lengths;
- :mod:`.configs`: adapt a demo config to a run (data, schedule, teacher);
- :mod:`.runs`: run ``tools/train.py`` subprocesses, find checkpoints;
- :mod:`.lanes`: how many of them run at once, with how many threads;
- :mod:`.results`: read metrics, measure the deployable model, write the
  table / json / plot.
"""
