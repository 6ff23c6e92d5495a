-- Late data per UTC day: trades that arrived after their window closed, and the bar
-- revisions they caused in bars_1m.
WITH t AS (
    SELECT CAST(trade_ts AS date) AS day, count(*) AS trades,
           sum(CASE WHEN late THEN 1 ELSE 0 END) AS late
    FROM trades
    GROUP BY CAST(trade_ts AS date)
), r AS (
    SELECT CAST(window_start AS date) AS day, count(*) AS bars,
           sum(CASE WHEN revision > 0 THEN 1 ELSE 0 END) AS revised_bars, sum(revision) AS revisions
    FROM bars_1m_latest
    GROUP BY CAST(window_start AS date)
)
SELECT t.day, t.trades, t.late, round(100.0 * t.late / t.trades, 4) AS late_pct, r.bars,
       r.revised_bars, r.revisions
FROM t
LEFT JOIN r ON r.day = t.day
ORDER BY t.day
