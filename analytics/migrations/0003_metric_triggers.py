"""Metric triggers: every change to message statuses and every stored engagement event adds aggregated rows to
analytics_metricdelta in the writer's own transaction (statement-level, over transition tables: one INSERT … SELECT
per statement, whatever its size).

Message metrics: `st:<status>` is how many messages are in each status (+1 entering, -1 leaving), and `sent` how
many were handed to a provider (statuses sent, delivered, bounced), so a bounce after delivery or a failure after
hand-off moves counts instead of adding them. Engagement metrics: `<kind>` totals, `<kind>_human` for opens and
clicks by people, and `<kind>_unique` / `<kind>_human_unique` from the first such event of each message
(analytics_messagefirst), with the conversion value summed in `amount`.
"""

from django.db import migrations

SENT_CLASS = "('sent', 'delivered', 'bounced')"

FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION cs_metrics_message_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_metricdelta (campaign_id, run_id, variant_id, channel, bucket, metric, count, amount)
    SELECT r.campaign_id, d.run_id, d.variant_id, d.channel, date_trunc('minute', now()), d.metric, d.n, 0
    FROM (
        SELECT n.run_id, n.variant_id, n.channel, 'st:' || n.status AS metric, count(*) AS n
        FROM new_rows n GROUP BY 1, 2, 3, 4
        UNION ALL
        SELECT n.run_id, n.variant_id, n.channel, 'sent', count(*)
        FROM new_rows n WHERE n.status IN {SENT_CLASS} GROUP BY 1, 2, 3
    ) d
    JOIN delivery_run r ON r.id = d.run_id
    ORDER BY 1, 2, 3, 4, 6;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION cs_metrics_message_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- +1 for each row's new status, -1 for its old one, summed per key: unchanged rows cancel out. Two hash
    -- aggregates and no join of the transition tables (run, variant and channel never change in an UPDATE).
    INSERT INTO analytics_metricdelta (campaign_id, run_id, variant_id, channel, bucket, metric, count, amount)
    SELECT r.campaign_id, d.run_id, d.variant_id, d.channel, date_trunc('minute', now()), d.metric, sum(d.n), 0
    FROM (
        SELECT n.run_id, n.variant_id, n.channel, 'st:' || n.status AS metric, count(*) AS n
        FROM new_rows n GROUP BY 1, 2, 3, 4
        UNION ALL
        SELECT o.run_id, o.variant_id, o.channel, 'st:' || o.status, -count(*)
        FROM old_rows o GROUP BY 1, 2, 3, 4
        UNION ALL
        SELECT n.run_id, n.variant_id, n.channel, 'sent', count(*)
        FROM new_rows n WHERE n.status IN {SENT_CLASS} GROUP BY 1, 2, 3
        UNION ALL
        SELECT o.run_id, o.variant_id, o.channel, 'sent', -count(*)
        FROM old_rows o WHERE o.status IN {SENT_CLASS} GROUP BY 1, 2, 3
    ) d
    JOIN delivery_run r ON r.id = d.run_id
    GROUP BY r.campaign_id, d.run_id, d.variant_id, d.channel, d.metric
    HAVING sum(d.n) <> 0
    ORDER BY 1, 2, 3, 4, 6;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION cs_metrics_message_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Messages deleted with their run (a purged campaign): their counts go with them.
    INSERT INTO analytics_metricdelta (campaign_id, run_id, variant_id, channel, bucket, metric, count, amount)
    SELECT r.campaign_id, d.run_id, d.variant_id, d.channel, date_trunc('minute', now()), d.metric, -d.n, 0
    FROM (
        SELECT o.run_id, o.variant_id, o.channel, 'st:' || o.status AS metric, count(*) AS n
        FROM old_rows o GROUP BY 1, 2, 3, 4
        UNION ALL
        SELECT o.run_id, o.variant_id, o.channel, 'sent', count(*)
        FROM old_rows o WHERE o.status IN {SENT_CLASS} GROUP BY 1, 2, 3
    ) d
    JOIN delivery_run r ON r.id = d.run_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION cs_metrics_engagement_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH events AS (
        -- Conversions of held-out recipients are counted apart, for the holdout comparison.
        SELECT e.*, CASE WHEN e.classification = 'holdout' THEN 'holdout_' || e.kind ELSE e.kind END AS k
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
        SELECT e.campaign_id, e.run_id, e.variant_id, e.channel, e.occurred_at, e.k AS metric, e.value
        FROM events e
        UNION ALL
        SELECT e.campaign_id, e.run_id, e.variant_id, e.channel, e.occurred_at, e.k || '_human', e.value
        FROM events e WHERE NOT e.is_machine AND e.k IN ('open', 'click')
        UNION ALL
        SELECT c.campaign_id, c.run_id, c.variant_id, c.channel, c.occurred_at, f.kind || '_unique', c.value
        FROM firsts f JOIN candidates c ON c.message_id = f.message_id AND c.first_kind = f.kind
    )
    INSERT INTO analytics_metricdelta (campaign_id, run_id, variant_id, channel, bucket, metric, count, amount)
    SELECT campaign_id, run_id, variant_id, channel, date_trunc('minute', occurred_at), metric, count(*),
           COALESCE(sum(value), 0)
    FROM deltas
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6;
    RETURN NULL;
END $$;

CREATE TRIGGER cs_metrics_message_insert AFTER INSERT ON delivery_message
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cs_metrics_message_insert();
CREATE TRIGGER cs_metrics_message_update AFTER UPDATE ON delivery_message
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION cs_metrics_message_update();
CREATE TRIGGER cs_metrics_message_delete AFTER DELETE ON delivery_message
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION cs_metrics_message_delete();
CREATE TRIGGER cs_metrics_engagement_insert AFTER INSERT ON analytics_engagementevent
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cs_metrics_engagement_insert();
"""

DROP = """
DROP TRIGGER IF EXISTS cs_metrics_message_insert ON delivery_message;
DROP TRIGGER IF EXISTS cs_metrics_message_update ON delivery_message;
DROP TRIGGER IF EXISTS cs_metrics_message_delete ON delivery_message;
DROP TRIGGER IF EXISTS cs_metrics_engagement_insert ON analytics_engagementevent;
DROP FUNCTION IF EXISTS cs_metrics_message_insert();
DROP FUNCTION IF EXISTS cs_metrics_message_update();
DROP FUNCTION IF EXISTS cs_metrics_message_delete();
DROP FUNCTION IF EXISTS cs_metrics_engagement_insert();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("analytics", "0002_metric_deltas"),
        ("delivery", "0009_seed_sends"),
    ]

    operations = [migrations.RunSQL(FUNCTIONS, DROP)]
