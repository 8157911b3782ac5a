"""The task registry: `RunConfig.task` names one of these (see `base.Task`).

Adding a task touches its own file, one line here and its gin files.
"""

from craft.tasks.base import Task
from craft.tasks.classify import Classification
from craft.tasks.diffusion import Diffusion
from craft.tasks.lm import LanguageModeling

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (
        LanguageModeling,
        Classification,
        Diffusion,
    )
}

__all__ = ["TASKS", "Classification", "Diffusion", "LanguageModeling", "Task"]
