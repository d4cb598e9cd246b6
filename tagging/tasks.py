"""Celery entry points of tagging; each calls one service."""

from celery import shared_task

from crm.hooks import touched_customers_process
from tagging import segment_index, services
from tagging.models import TagRule


@shared_task(acks_late=True)
def run_due_tag_rules() -> int:
    """Beat: run the rules whose interval has passed (hourly by default)."""
    return len(services.tag_rules_run_due())


@shared_task(acks_late=True)
def run_tag_rule(rule_id: int) -> None:
    rule = TagRule.objects.filter(pk=rule_id).first()
    if rule is not None:
        services.tag_rule_run(rule=rule)


@shared_task(acks_late=True)
def tag_touched_customers() -> int | None:
    """Beat, every 10 s: re-evaluate the rules for customers whose events or orders arrived."""
    return touched_customers_process("tagging")


@shared_task(acks_late=True)
def expire_tags() -> int:
    return services.tags_expire()


@shared_task(acks_late=True)
def run_bulk_tag_job(job_id: int) -> None:
    services.bulk_tag_job_run(job_id=job_id)


@shared_task(acks_late=True)
def resume_bulk_tag_jobs() -> int:
    """Sweeper: enqueue again the bulk jobs that stopped making progress."""
    ids = services.bulk_tag_jobs_resume()
    for job_id in ids:
        run_bulk_tag_job.delay(job_id)
    return len(ids)


@shared_task(acks_late=True)
def sweep_orphans() -> int:
    """Nightly: remove tags a rule run wrote for a customer deleted while it ran."""
    return services.orphans_sweep()


@shared_task(acks_late=True)
def build_segment_index() -> int | None:
    """Beat, every minute: a new build of the segment index once SEGMENT_INDEX_MINUTES have
    passed since the last."""
    index = segment_index.build_due()
    return index.pk if index else None
