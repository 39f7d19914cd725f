"""Attribution credit: each conversion event counts once whatever the model. A touch stores its share of the event
(EngagementEvent.credit) and the metric trigger sums the shares into MetricDelta.credit beside the touch count, so
a linear purchase with three touches is one conversion (1/3 each), not three.

Conversions stored before this were one touch each (last or first touch, or the sandbox): their credit is 1."""

from django.db import migrations, models

ENGAGEMENT_FUNCTION = """
CREATE OR REPLACE FUNCTION cs_metrics_engagement_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH events AS (
        -- Conversions of held-out recipients are counted apart, for the holdout comparison. A conversion's
        -- credit is its share of the event (1 when stored without one); other kinds carry none.
        SELECT e.*, CASE WHEN e.classification = 'holdout' THEN 'holdout_' || e.kind ELSE e.kind END AS k,
               CASE WHEN e.kind = 'conversion' THEN COALESCE(e.credit, 1) ELSE 0 END AS share
        FROM new_rows e
    ), candidates AS (
        -- The earliest event of each message and kind in this statement, and the earliest human one.
        SELECT DISTINCT ON (e.message_id, v.kind) e.*, v.kind AS first_kind
        FROM events e
        CROSS JOIN LATERAL (VALUES
            (e.k),
            (CASE WHEN NOT e.is_machine AND e.k IN ('open', 'click') THEN e.k || '_human' END)
        ) AS v(kind)
        WHERE v.kind IS NOT NULL
        ORDER BY e.message_id, v.kind, e.occurred_at
    ), firsts AS (
        INSERT INTO analytics_messagefirst (message_id, kind)
        SELECT message_id, first_kind FROM candidates ORDER BY 1, 2
        ON CONFLICT DO NOTHING
        RETURNING message_id, kind
    ), deltas AS (
        SELECT e.campaign_id, e.run_id, e.variant_id, e.channel, e.occurred_at, e.k AS metric, e.value, e.share
        FROM events e
        UNION ALL
        SELECT e.campaign_id, e.run_id, e.variant_id, e.channel, e.occurred_at, e.k || '_human', e.value, 0
        FROM events e WHERE NOT e.is_machine AND e.k IN ('open', 'click')
        UNION ALL
        SELECT c.campaign_id, c.run_id, c.variant_id, c.channel, c.occurred_at, f.kind || '_unique', c.value,
               c.share
        FROM firsts f JOIN candidates c ON c.message_id = f.message_id AND c.first_kind = f.kind
    )
    INSERT INTO analytics_metricdelta (campaign_id, run_id, variant_id, channel, bucket, metric, count, amount,
                                       credit)
    SELECT campaign_id, run_id, variant_id, channel, date_trunc('minute', occurred_at), metric, count(*),
           COALESCE(sum(value), 0), sum(share)
    FROM deltas
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6;
    RETURN NULL;
END $$;
"""


def _previous_function() -> str:
    from importlib import import_module

    functions = import_module("analytics.migrations.0003_metric_triggers").FUNCTIONS
    start = functions.index("CREATE OR REPLACE FUNCTION cs_metrics_engagement_insert()")
    return functions[start : functions.index("END $$;", start) + len("END $$;")]


BACKFILL = """
UPDATE analytics_engagementevent SET credit = 1 WHERE kind = 'conversion' AND credit IS NULL;
UPDATE analytics_metricdelta SET credit = count WHERE metric LIKE '%conversion%';
"""


class Migration(migrations.Migration):
    dependencies = [("analytics", "0005_conversion_index")]

    operations = [
        migrations.AddField(
            model_name="engagementevent",
            name="credit",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=7, null=True),
        ),
        migrations.AddField(
            model_name="metricdelta",
            name="credit",
            field=models.DecimalField(db_default=0, decimal_places=6, default=0, max_digits=20),
        ),
        migrations.RunSQL(ENGAGEMENT_FUNCTION, _previous_function()),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
    ]
