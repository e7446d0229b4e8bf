"""When the teacher goes away: the service and judge models' retirement dates from litellm's model map
(`deprecation_date`, ~940 models), so a run says how long its teacher has left.

litellm is imported only for a real provider's model (the offline stand-in has no date and needs no
litellm); a model the map does not know has no date, which is said, not guessed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

DEFAULT_WARN_DAYS = 90  # a migration (synthesis, rounds, sign-off, the switch) takes weeks


@dataclass(frozen=True)
class Retirement:
    model: str
    date: dt.date
    days_left: int

    def line(self, role: str, warn_days: int = DEFAULT_WARN_DAYS) -> str:
        if self.days_left < 0:
            return f"the {role} model {self.model} retired on {self.date} ({-self.days_left} days ago)"
        urgent = " — inside the warning window: migrate before then" if self.days_left <= warn_days else ""
        return f"the {role} model {self.model} retires on {self.date} ({self.days_left} days left){urgent}"


def retirement_date(model: str, model_map: dict | None = None) -> dt.date | None:
    """The `deprecation_date` litellm's map gives `model` (with or without its provider prefix)."""
    if model_map is None:
        import litellm

        model_map = litellm.model_cost
    for key in (model, model.split("/", 1)[1] if "/" in model else None):
        raw = (model_map.get(key) or {}).get("deprecation_date") if key else None
        if raw:
            try:
                return dt.date.fromisoformat(str(raw)[:10])
            except ValueError:
                return None
    return None


def retirement(model: str, today: dt.date | None = None, model_map: dict | None = None) -> Retirement | None:
    date = retirement_date(model, model_map)
    if date is None:
        return None
    today = today or dt.date.today()
    return Retirement(model=model, date=date, days_left=(date - today).days)


def retirement_lines(models: dict[str, str], *, standin: str, today: dt.date | None = None,
                     warn_days: int = DEFAULT_WARN_DAYS, model_map: dict | None = None) -> list[str]:
    """One line per role (service, judge) whose model has an announced retirement date."""
    out, seen = [], set()
    for role, model in models.items():
        if model == standin or model in seen:
            continue
        seen.add(model)
        r = retirement(model, today, model_map)
        if r is not None:
            out.append(r.line(role, warn_days))
    return out
