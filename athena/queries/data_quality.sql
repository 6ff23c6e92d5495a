-- Data quality per symbol and UTC day: feed gaps (the day each starts) and the minutes
-- they lasted, and the latest bars_1m bars they overlap with the minutes of those bars
-- the feed was down. Days without a gap are left out.
WITH g AS (
    SELECT symbol, CAST(gap_start AS date) AS day, count(*) AS gaps,
           sum(to_unixtime(gap_end) - to_unixtime(gap_start)) / 60.0 AS gap_minutes
    FROM gaps
    GROUP BY symbol, CAST(gap_start AS date)
), b AS (
    SELECT symbol, CAST(window_start AS date) AS day, count(*) AS flagged_bars,
           sum(gap_ms) / 60000.0 AS flagged_minutes
    FROM bars_1m_latest
    WHERE gap_ms > 0
    GROUP BY symbol, CAST(window_start AS date)
)
SELECT g.symbol, g.day, g.gaps, round(g.gap_minutes, 3) AS gap_minutes,
       coalesce(b.flagged_bars, 0) AS flagged_bars, round(coalesce(b.flagged_minutes, 0), 3) AS flagged_minutes
FROM g
LEFT JOIN b ON b.symbol = g.symbol AND b.day = g.day
ORDER BY g.day, g.symbol
