"""Celery entry points of lifecycle; each calls one service."""

from celery import shared_task

from crm.hooks import touched_customers_process
from lifecycle import services


@shared_task(acks_late=True)
def evaluate_due_models() -> int:
    """Beat, every minute: evaluate the models whose interval (15 min by default) has passed."""
    return sum(r.changed for r in services.stage_models_evaluate(due_only=True))


@shared_task(acks_late=True)
def evaluate_model(key: str) -> int:
    return sum(r.changed for r in services.stage_models_evaluate(keys=[key]))


@shared_task(acks_late=True)
def evaluate_touched_customers() -> int | None:
    """Beat, every 10 s: re-evaluate the customers whose events or orders arrived."""
    return touched_customers_process("lifecycle")


@shared_task(acks_late=True)
def sweep_orphans() -> int:
    """Beat, nightly: stage rows left by a customer deleted while an evaluation ran."""
    return services.orphans_sweep()


@shared_task(acks_late=True)
def run_bulk_stage_job(job_id: int) -> None:
    services.bulk_stage_job_run(job_id=job_id)


@shared_task(acks_late=True)
def resume_bulk_stage_jobs() -> int:
    """Sweeper: enqueue again the bulk stage moves that stopped making progress."""
    ids = services.bulk_stage_jobs_resume()
    for job_id in ids:
        run_bulk_stage_job.delay(job_id)
    return len(ids)
