from django.db import migrations

# When a recipient may next be sent to, in their own timezone: a fixed local time, a daily window (which may cross
# midnight) and weekends skipped. Local wall-clock times are turned back into instants with PostgreSQL's time zone
# rules, so the answer follows daylight-saving changes. Used set-based by fan-out and again at claim time.
NEXT_SEND_TIME = """
CREATE OR REPLACE FUNCTION cs_next_send_time(
    now_ts timestamptz, tz text, window_start time, window_end time, skip_weekends boolean, local_time time
) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    zone text := COALESCE(NULLIF(tz, ''), 'UTC');
    local_now timestamp;
    candidate timestamp;
    t time;
    result timestamptz;
BEGIN
    BEGIN
        local_now := now_ts AT TIME ZONE zone;
    EXCEPTION WHEN others THEN
        zone := 'UTC';
        local_now := now_ts AT TIME ZONE zone;
    END;
    IF local_time IS NOT NULL THEN
        candidate := local_now::date + local_time;
        IF candidate < local_now THEN
            candidate := candidate + interval '1 day';
        END IF;
        WHILE skip_weekends AND extract(isodow FROM candidate) >= 6 LOOP
            candidate := candidate + interval '1 day';
        END LOOP;
    ELSE
        candidate := local_now;
        FOR i IN 1..10 LOOP
            IF skip_weekends AND extract(isodow FROM candidate) >= 6 THEN
                candidate := candidate::date + interval '1 day' + COALESCE(window_start, time '00:00');
                CONTINUE;
            END IF;
            IF window_start IS NOT NULL THEN
                t := candidate::time;
                IF window_start < window_end THEN
                    IF t < window_start THEN
                        candidate := candidate::date + window_start;
                        CONTINUE;
                    ELSIF t >= window_end THEN
                        candidate := candidate::date + interval '1 day' + window_start;
                        CONTINUE;
                    END IF;
                ELSIF window_start > window_end AND t >= window_end AND t < window_start THEN
                    candidate := candidate::date + window_start;  -- a window across midnight, e.g. 20:00-02:00
                    CONTINUE;
                END IF;
            END IF;
            EXIT;
        END LOOP;
    END IF;
    result := candidate AT TIME ZONE zone;
    RETURN GREATEST(result, now_ts);
END;
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("delivery", "0003_inbox_and_provider_ids")]

    operations = [
        migrations.RunSQL(
            NEXT_SEND_TIME, "DROP FUNCTION IF EXISTS cs_next_send_time(timestamptz, text, time, time, boolean, time)"
        )
    ]
