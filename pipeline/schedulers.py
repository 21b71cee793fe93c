"""Learning-rate schedules the configs can pick (``scheduler=``), stepped once per optimizer step."""
from torch.optim import lr_scheduler


class OneCycleLR(lr_scheduler.OneCycleLR):
    """torch's one-cycle schedule, made to work for any number of steps and for resumed runs.

    - torch divides by the warm-up length ``pct_start * total_steps - 1``: with 4 steps and
      pct_start=0.25 that is zero (ZeroDivisionError). Each phase gets at least one step here.
    - torch raises once stepped past ``total_steps``; here the final learning rate is kept.
    - A resumed run may be longer or shorter than the interrupted one: ``load_state_dict`` takes
      only the position reached, and the schedule spans this run's ``total_steps``.
    """

    def __init__(self, optimizer, total_steps: int, max_lr: float = 5e-3, pct_start: float = 0.25, **kwargs):
        self.requested_total_steps = int(total_steps)
        total_steps = max(2, int(total_steps))
        # Warm-up ends at pct_start * total_steps - 1 > 0, and leaves at least half a step to anneal.
        pct_start = min(max(float(pct_start), 1.5 / total_steps), 1.0 - 0.5 / total_steps)
        super().__init__(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start, **kwargs)

    def get_lr(self):
        last = self.total_steps - 1  # where the final phase ends
        if self.last_epoch <= last:
            return super().get_lr()
        reached, self.last_epoch = self.last_epoch, last
        try:
            return super().get_lr()
        finally:
            self.last_epoch = reached

    def load_state_dict(self, state_dict: dict) -> None:
        schedule = {key: self.__dict__[key] for key in ("total_steps", "requested_total_steps", "_schedule_phases")}
        super().load_state_dict(state_dict)
        self.__dict__.update(schedule)
