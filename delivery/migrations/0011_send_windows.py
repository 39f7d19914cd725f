"""Send windows, weekends and local send times, exact on every day of the year in every timezone.

The functions of migration 0004 (cs_next_send_time) and compliance migration 0003 (cs_quiet_hours_end) turned local
wall-clock times back into instants with PostgreSQL's `timestamp AT TIME ZONE`, which reads a time inside a DST gap
with the offset from before the change (a window opening at 02:30 on the spring-forward day in New York came out at
03:30 EDT, an hour after the clock actually entered the window) and an ambiguous time with the offset from after it
(the second 01:30 of an autumn night, an hour late); and it re-read "now" through the same round trip, so a
recipient inside their window during the repeated hour was held back an hour. A window crossing midnight with
weekends off skipped Monday's 00:00-02:00 part. They are replaced here by functions that walk the recipient's clock
as it really runs, jumps included. tests/test_send_window_reference.py checks them against a minute-by-minute
reading of Python's zoneinfo over thousands of cases.
"""

from __future__ import annotations

import importlib

from django.db import migrations

FUNCTIONS = """
-- The zone's UTC offset at an instant (what its clock shows minus UTC).
CREATE OR REPLACE FUNCTION cs_local_offset(at timestamptz, zone text) RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (at AT TIME ZONE zone) - (at AT TIME ZONE 'UTC')
$$;

-- Whether a local wall-clock time is one a recipient may be sent to: its time of day inside the daily window
-- [window_start, window_end) — which crosses midnight when the start is later than the end; no window, or equal
-- ends, allow the whole day — and, with weekends skipped, its local date a Monday to Friday. So a 20:00-02:00
-- window with weekends off sends Friday 20:00-24:00 and Monday 00:00-02:00, never on a Saturday or Sunday date:
-- "not at the weekend" as the recipient's calendar says it.
CREATE OR REPLACE FUNCTION cs_in_send_window(local timestamp, window_start time, window_end time, skip_weekends boolean)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (NOT skip_weekends OR extract(isodow FROM local) < 6)
       AND (window_start IS NULL OR window_end IS NULL OR window_start = window_end
            OR CASE WHEN window_start < window_end
                    THEN local::time >= window_start AND local::time < window_end
                    ELSE local::time >= window_start OR local::time < window_end END)
$$;

-- The first instant in (after, before] at which the zone's offset differs from its offset at `after`: a clock
-- change, found by halving on whole seconds (tz rules change offsets on whole seconds). The caller knows the offset
-- at `before` differs; two changes between them (never within the few days searched here) would find the first.
CREATE OR REPLACE FUNCTION cs_local_offset_change(after timestamptz, before timestamptz, zone text)
RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    offset_after interval := cs_local_offset(after, zone);
    low bigint := floor(extract(epoch FROM after));
    high bigint := ceil(extract(epoch FROM before));
    middle bigint;
BEGIN
    WHILE high - low > 1 LOOP
        middle := (low + high) / 2;
        IF cs_local_offset(to_timestamp(middle), zone) = offset_after THEN
            low := middle;
        ELSE
            high := middle;
        END IF;
    END LOOP;
    RETURN to_timestamp(high);
END $$;

-- The first instant at which the zone's clock shows `local` or later. On an autumn night that is the first of the
-- two moments showing it; inside a spring-forward gap, where the clock never shows it, the moment the clock jumps
-- past it. Any instant the clock shows `local` at lies within 14 hours before to 12 hours after `local` read as
-- UTC (offsets run from -12 to +14 hours), so the offsets 15 hours before and 13 hours after bracket every change
-- that matters.
CREATE OR REPLACE FUNCTION cs_local_time_reached(local timestamp, zone text) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    as_utc timestamptz := local AT TIME ZONE 'UTC';
    offset_before interval := cs_local_offset(as_utc - interval '15 hours', zone);
    offset_after interval := cs_local_offset(as_utc + interval '13 hours', zone);
    by_offset_before timestamptz := as_utc - offset_before;
    by_offset_after timestamptz := as_utc - offset_after;
    before_holds boolean;
    after_holds boolean;
BEGIN
    IF offset_before = offset_after THEN
        RETURN by_offset_before;
    END IF;
    before_holds := cs_local_offset(by_offset_before, zone) = offset_before;
    after_holds := cs_local_offset(by_offset_after, zone) = offset_after;
    IF before_holds AND after_holds THEN
        RETURN LEAST(by_offset_before, by_offset_after);  -- shown twice (clocks went back): the first
    ELSIF before_holds THEN
        RETURN by_offset_before;
    ELSIF after_holds THEN
        RETURN by_offset_after;
    END IF;
    RETURN cs_local_offset_change(by_offset_after, by_offset_before, zone);  -- skipped (clocks went forward)
END $$;

-- When a recipient may next be sent to, at or after now_ts, in their timezone `tz` (none, or a name PostgreSQL does
-- not know, is read as UTC, so one bad contact row cannot fail a fan-out or a claim batch).
--   * Without local_time: the first instant from now_ts on whose local time cs_in_send_window allows (now_ts
--     itself when it is allowed). Walking the clock as it runs, a window is entered where the clock reaches its
--     start, where a spring-forward jump lands inside it, where an autumn jump back re-enters it, or at midnight of
--     the next weekday.
--   * With local_time ("09:00 wherever they are"): each local date's send moment is when the clock first shows
--     local_time that day (cs_local_time_reached: the first of two on an autumn night, the end of the gap when the
--     clock skips it). The answer is the first such moment from now_ts on that the window and weekday rules allow;
--     a moment that has passed today means tomorrow's (or Monday's). If none is allowed in the next ten days (a
--     local time outside the window, which campaigns refuse), the window alone decides.
-- Used set-based by fan-out (due_at) and by the claim (windows and weekends only).
CREATE OR REPLACE FUNCTION cs_next_send_time(
    now_ts timestamptz, tz text, window_start time, window_end time, skip_weekends boolean, local_time time
) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    zone text := COALESCE(NULLIF(tz, ''), 'UTC');
    weekdays_only boolean := COALESCE(skip_weekends, false);
    opens time := window_start;
    closes time := window_end;
    at_ts timestamptz := now_ts;
    local timestamp;
    local_now timestamp;
    target timestamp;
    opening timestamp;
    candidate timestamptz;
    day date;
BEGIN
    IF now_ts IS NULL THEN
        RETURN NULL;
    END IF;
    -- Four IANA names are also time zone abbreviations, which AT TIME ZONE reads first, as fixed offsets (CET as
    -- +01 all summer). IANA itself now makes them links to these cities (tzdata 2024b); their rules agree since 1997.
    zone := CASE zone WHEN 'CET' THEN 'Europe/Brussels' WHEN 'MET' THEN 'Europe/Brussels'
                      WHEN 'EET' THEN 'Europe/Athens' WHEN 'WET' THEN 'Europe/Lisbon' ELSE zone END;
    BEGIN
        local_now := now_ts AT TIME ZONE zone;
    EXCEPTION WHEN invalid_parameter_value THEN
        zone := 'UTC';
        local_now := now_ts AT TIME ZONE zone;
    END;
    IF opens IS NULL OR closes IS NULL OR opens = closes THEN
        opens := NULL;
        closes := NULL;
    END IF;
    IF local_time IS NOT NULL THEN
        -- From yesterday's date: a clock that jumped over local_time exactly now shows a later date already. A
        -- target more than a day behind the clock was reached before now (no clock jumps by more than a day).
        FOR days_ahead IN -1..9 LOOP
            target := (local_now::date + days_ahead) + local_time;
            CONTINUE WHEN target < local_now - interval '1 day';
            candidate := cs_local_time_reached(target, zone);
            IF candidate >= now_ts AND cs_in_send_window(candidate AT TIME ZONE zone, opens, closes, weekdays_only)
            THEN
                RETURN candidate;
            END IF;
        END LOOP;
    END IF;
    -- Each pass either answers or moves to the next clock change before the window's next opening, where the
    -- clock may already be inside the window (a jump), or from where the opening is worked out again.
    FOR pass IN 1..12 LOOP
        local := at_ts AT TIME ZONE zone;
        IF cs_in_send_window(local, opens, closes, weekdays_only) THEN
            RETURN at_ts;
        END IF;
        day := local::date;
        IF opens IS NOT NULL AND local::time < opens AND NOT (weekdays_only AND extract(isodow FROM day) >= 6) THEN
            opening := day + opens;
        ELSE
            day := day + 1;
            WHILE weekdays_only AND extract(isodow FROM day) >= 6 LOOP
                day := day + 1;
            END LOOP;
            -- That day's first allowed moment: an ordinary window's start (or the start of one ending at midnight);
            -- midnight without a window, or for one across midnight (its early-morning part).
            opening := day + CASE WHEN opens IS NULL OR (opens > closes AND closes <> time '00:00') THEN time '00:00'
                                  ELSE opens END;
        END IF;
        -- Seconds, not days: an interval in days would be added on the session's calendar.
        candidate := at_ts + make_interval(secs => extract(epoch FROM opening - local));
        IF cs_local_offset(candidate, zone) = local - (at_ts AT TIME ZONE 'UTC') THEN
            RETURN candidate;
        END IF;
        at_ts := cs_local_offset_change(at_ts, candidate, zone);
    END LOOP;
    RETURN at_ts;
END $$;

-- When the recipient's quiet hours [qs, qe) (local times, may cross midnight) end, if `at` falls inside them in
-- their timezone: the first instant after `at` whose local time is outside them, read on the clock as it runs (an
-- end inside a spring-forward gap is the moment the clock jumps past it; an ambiguous end is its first
-- occurrence). NULL when `at` is outside them, or without quiet hours (equal ends mean none). Quiet hours are the
-- complement of a send window from qe to qs.
CREATE OR REPLACE FUNCTION cs_quiet_hours_end(at timestamptz, tz text, qs time, qe time) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN at IS NULL OR qs IS NULL OR qe IS NULL OR qs = qe THEN NULL
                ELSE NULLIF(cs_next_send_time(at, tz, qe, qs, false, NULL), at) END
$$;
"""

# compliance migration 0003's definition, restored when this migration is reversed.
PREVIOUS_QUIET_HOURS_END = """
CREATE OR REPLACE FUNCTION cs_quiet_hours_end(at timestamptz, tz text, qs time, qe time) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN qs IS NULL OR qe IS NULL OR qs = qe THEN NULL
        WHEN qs < qe THEN
            CASE WHEN (at AT TIME ZONE tz)::time >= qs AND (at AT TIME ZONE tz)::time < qe
                 THEN ((at AT TIME ZONE tz)::date + qe) AT TIME ZONE tz END
        WHEN (at AT TIME ZONE tz)::time >= qs THEN (((at AT TIME ZONE tz)::date + 1) + qe) AT TIME ZONE tz
        WHEN (at AT TIME ZONE tz)::time < qe THEN ((at AT TIME ZONE tz)::date + qe) AT TIME ZONE tz
    END
$$;
"""

DROP_HELPERS = """
DROP FUNCTION IF EXISTS cs_local_time_reached(timestamp, text);
DROP FUNCTION IF EXISTS cs_local_offset_change(timestamptz, timestamptz, text);
DROP FUNCTION IF EXISTS cs_in_send_window(timestamp, time, time, boolean);
DROP FUNCTION IF EXISTS cs_local_offset(timestamptz, text);
"""


def _previous_functions() -> str:
    previous = importlib.import_module("delivery.migrations.0004_next_send_time_function")
    return previous.NEXT_SEND_TIME + PREVIOUS_QUIET_HOURS_END + DROP_HELPERS


class Migration(migrations.Migration):
    dependencies = [("delivery", "0010_sticky_variants"), ("compliance", "0003_preferences_unsubscribes")]

    operations = [migrations.RunSQL(FUNCTIONS, _previous_functions())]
